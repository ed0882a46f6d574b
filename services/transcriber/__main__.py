"""``python -m services.transcriber [--check] [--burst]``: faster-whisper on ``audio:segments``."""

from services.transcriber.handler import TranscriberHandler
from services.transcriber.settings import TranscriberSettings
from shared.runtime import stage_app
from shared.schemas import AudioSegmentMessage
from shared.streams import Groups

app = stage_app(
    TranscriberSettings,
    Groups.TRANSCRIBER,
    lambda s: {AudioSegmentMessage: TranscriberHandler(s.whisper).load()},
)

if __name__ == "__main__":
    app()
