"""``python -m services.memory [--check] [--burst]``: faces and transcripts into person memory."""

import typer

from services.memory.extract import build_extractor
from services.memory.handler import MemoryHandler
from services.memory.settings import MemorySettings
from shared.runtime import Stage, connect, serve
from shared.schemas import FaceMessage, TranscriptMessage
from shared.streams import Groups


def main(
    check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
    burst: bool = typer.Option(False, "--burst", help="Exit 0 once the streams are drained."),
) -> None:
    settings = MemorySettings()

    def build() -> Stage:
        client = connect(settings, Groups.MEMORY)
        handler = MemoryHandler(client, settings, build_extractor(settings, client))
        return Stage({FaceMessage: handler.on_face, TranscriptMessage: handler.on_transcript}, ticker=handler)

    raise typer.Exit(serve(settings, Groups.MEMORY, build, check, burst))


if __name__ == "__main__":
    typer.run(main)
