"""Real speech for the tests: espeak-ng speaks a sentence into a WAV."""

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

SARAH = "Hi, I'm Sarah Chen from Stripe. We met at the climbing gym."
RATE = 16_000


def espeak_wav(text: str, path: Path, voice: str = "en-us") -> Path:
    """Speak ``text`` into ``path`` (espeak-ng is installed by ``make setup``)."""
    assert shutil.which("espeak-ng"), "espeak-ng is missing: run `make setup`"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    return path


def speech(text: str, tmp: Path, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken at 16 kHz mono float32."""
    from faster_whisper import decode_audio

    return decode_audio(str(espeak_wav(text, tmp / "speech.wav", voice)), sampling_rate=RATE)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def voiced_span(audio: np.ndarray, level: float = 0.02) -> tuple[float, float]:
    """First and last loud sample, in seconds: where the speech really is, independent of the VAD."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return loud[0] / RATE, loud[-1] / RATE
