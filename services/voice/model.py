"""resemblyzer's GE2E speaker encoder (Apache-2.0): 256-d normed embeddings of 16 kHz speech.

Its weights (``resemblyzer/pretrained.pt``, 17 MB) ship inside the PyPI wheel, so nothing is
downloaded. Measured against the alternatives in docs/ARCHITECTURE.md ("Voice").
"""

import threading
import warnings

import numpy as np

from services.voice.settings import VoiceModelSettings

NAME = "resemblyzer-ge2e"
# resemblyzer imports a scipy namespace deprecated in SciPy 1.8: nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*scipy\.ndimage\.morphology", category=DeprecationWarning)


class VoiceEncoderModel:
    """Loads once; ``embed`` is safe to call from several threads."""

    def __init__(self, settings: VoiceModelSettings) -> None:
        self.settings = settings
        self._encoder = None
        self._lock = threading.Lock()

    def load(self) -> "VoiceEncoderModel":
        from resemblyzer import VoiceEncoder

        with self._lock:
            if self._encoder is None:
                self._encoder = VoiceEncoder(self.settings.device, verbose=False)
        return self

    def embed(self, audio: np.ndarray) -> tuple[np.ndarray, float]:
        """The speaker embedding of float32 samples at 16 kHz, and the seconds of voiced audio it
        was taken from (resemblyzer's own preprocessing: volume normalised, long silences cut)."""
        from resemblyzer import preprocess_wav

        if self._encoder is None:
            self.load()
        if not np.any(np.abs(audio) > 1e-4):  # digital silence: its volume cannot be normalised
            return np.zeros(0, np.float32), 0.0
        wav = preprocess_wav(audio, source_sr=self.settings.sample_rate)
        speech_s = len(wav) / self.settings.sample_rate
        if speech_s < self.settings.min_speech_s:
            return np.zeros(0, np.float32), speech_s
        with self._lock:  # torch modules are not re-entrant across threads
            vector = self._encoder.embed_utterance(wav)  # type: ignore[union-attr]
        return np.asarray(vector, np.float32), speech_s
