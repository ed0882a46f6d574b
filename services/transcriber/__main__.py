"""``python -m services.transcriber [--check] [--burst]``: faster-whisper on ``audio:segments``."""

import typer

from services.transcriber.handler import TranscriberHandler
from services.transcriber.settings import TranscriberSettings
from shared.runtime import serve
from shared.schemas import AudioSegmentMessage
from shared.streams import Groups


def main(
    check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
    burst: bool = typer.Option(False, "--burst", help="Exit 0 once the stream is drained."),
) -> None:
    settings = TranscriberSettings()
    handlers = lambda: {AudioSegmentMessage: TranscriberHandler(settings.whisper).load()}  # noqa: E731
    raise typer.Exit(serve(settings, Groups.TRANSCRIBER, handlers, check, burst))


if __name__ == "__main__":
    typer.run(main)
