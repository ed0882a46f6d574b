"""``python -m services.face [--check] [--burst]``: insightface detection and embedding on ``frames``."""

import typer

from services.face.handler import FaceHandler
from services.face.settings import FaceSettings
from shared.runtime import serve
from shared.schemas import FrameMessage
from shared.streams import Groups


def main(
    check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
    burst: bool = typer.Option(False, "--burst", help="Exit 0 once the stream is drained."),
) -> None:
    settings = FaceSettings()
    handlers = lambda: {FrameMessage: FaceHandler(settings.face).load()}  # noqa: E731
    raise typer.Exit(serve(settings, Groups.FACE, handlers, check, burst))


if __name__ == "__main__":
    typer.run(main)
