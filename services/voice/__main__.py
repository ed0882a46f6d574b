"""``python -m services.voice [--check] [--burst]``: a speaker embedding for each speech segment."""

from services.voice.handler import VoiceHandler
from services.voice.settings import VoiceSettings
from shared.runtime import stage_app
from shared.schemas import AudioSegmentMessage
from shared.streams import Groups

app = stage_app(VoiceSettings, Groups.VOICE, lambda s: {AudioSegmentMessage: VoiceHandler(s.voice).load()})

if __name__ == "__main__":
    app()
