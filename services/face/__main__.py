"""``python -m services.face [--check]``: the face stage on ``frames``."""

import typer

from services.face.handler import FaceHandler
from services.face.settings import FaceSettings
from shared.runtime import serve
from shared.schemas import FrameMessage
from shared.streams import Groups


def main(
    check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
) -> None:
    settings = FaceSettings()
    code = serve(settings, Groups.FACE, lambda: {FrameMessage: FaceHandler(settings.face).load()}, check, burst)
    raise typer.Exit(code)


if __name__ == "__main__":
    typer.run(main)
