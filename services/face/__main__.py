"""``python -m services.face [--check] [--burst]``: insightface detection and embedding on ``frames``."""

from services.face.handler import FaceHandler
from services.face.settings import FaceSettings
from shared.runtime import stage_app
from shared.schemas import FrameMessage
from shared.streams import Groups

app = stage_app(FaceSettings, Groups.FACE, lambda s: {FrameMessage: FaceHandler(s.face).load()})

if __name__ == "__main__":
    app()
