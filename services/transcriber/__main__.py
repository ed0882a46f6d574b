"""``python -m services.transcriber [--check] [--burst]``: faster-whisper on ``audio:segments``."""

from services.transcriber.context import SessionContext
from services.transcriber.handler import TranscriberHandler
from services.transcriber.settings import TranscriberSettings
from shared.runtime import connect, stage_app
from shared.schemas import AudioSegmentMessage
from shared.streams import Groups


def build(settings: TranscriberSettings) -> dict[type[AudioSegmentMessage], TranscriberHandler]:
    context = SessionContext(connect(settings, Groups.TRANSCRIBER))
    return {AudioSegmentMessage: TranscriberHandler(settings.whisper, context=context).load()}


app = stage_app(TranscriberSettings, Groups.TRANSCRIBER, build)

if __name__ == "__main__":
    app()
