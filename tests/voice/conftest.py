import numpy as np
import pytest

from services.voice.model import VoiceEncoderModel
from services.voice.samples import recorded
from services.voice.settings import VoiceModelSettings


@pytest.fixture(scope="session")
def voice_model() -> VoiceEncoderModel:
    """resemblyzer's GE2E encoder, from the weights in its wheel."""
    return VoiceEncoderModel(VoiceModelSettings()).load()


@pytest.fixture(scope="session")
def readers() -> dict[str, list[tuple[np.ndarray, str]]]:
    """Two real speakers (pocketsphinx-testdata): a LibriVox reader and a card reader."""
    return recorded()
