"""``python -m services.transcriber [--check] [--burst]``: faster-whisper on ``audio:segments``,
and live words from ``audio:partials``."""

from services.transcriber.context import SessionContext
from services.transcriber.handler import TranscriberHandler
from services.transcriber.live import LiveWords
from services.transcriber.settings import TranscriberSettings
from shared.consumer import Handler
from shared.runtime import connect, stage_app
from shared.schemas import AudioSegmentMessage, PartialSegmentMessage, StreamMessage
from shared.streams import Groups


def build(settings: TranscriberSettings) -> dict[type[StreamMessage], Handler]:
    client = connect(settings, Groups.TRANSCRIBER)
    finals = TranscriberHandler(settings.whisper, context=SessionContext(client)).load()
    live = LiveWords(settings.whisper, finals.model, client, finals.hotwords)
    # segments first: the consumer handles and writes its streams in this order
    return {AudioSegmentMessage: finals, PartialSegmentMessage: live}


app = stage_app(TranscriberSettings, Groups.TRANSCRIBER, build)

if __name__ == "__main__":
    app()
