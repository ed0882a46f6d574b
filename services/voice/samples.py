"""Speech with known speakers, for the voice checks, the bench and the eval scenes.

Recorded speech (Debian's ``pocketsphinx-testdata``, BSD, installed by ``make setup``): one
LibriVox reader (5 sentences, 25 s) and another speaker reading card names (5 short phrases).
Synthetic speech: espeak-ng voices, each a different variant (pitch and formants), which are
easier to tell apart than people are.
"""

from pathlib import Path

import numpy as np

from services.capture.demo import speak

RECORDED = Path("/usr/share/pocketsphinx/test/data")
ESPEAK_VOICES = ("en-us", "en-gb+f4", "en-us+m3", "en-us+f2", "en-gb+m7")
SENTENCES = (
    "Hi, I'm glad we finally get to meet in person.",
    "I have been working on the payments team for two years.",
    "We should grab a coffee after the talk this afternoon.",
    "The new office is right next to the climbing gym.",
)


def recorded() -> dict[str, list[tuple[np.ndarray, str]]]:
    """Speaker -> [(16 kHz float32 samples, what was said)]."""
    from faster_whisper import decode_audio

    if not RECORDED.is_dir():
        raise RuntimeError("no recorded speech: apt-get install pocketsphinx-testdata (make setup does this)")
    out: dict[str, list[tuple[np.ndarray, str]]] = {}
    for name, folder in (("librivox-reader", "librivox"), ("cards-reader", "cards")):
        said = {}
        for line in (
            (RECORDED / folder / next((RECORDED / folder).glob("*transcription")).name)
            .read_text()
            .splitlines()
        ):
            text, _, ref = line.rpartition("(")
            said[ref.rstrip(")").strip()] = text.replace("<s>", "").replace("</s>", "").strip()
        out[name] = [
            (decode_audio(str(wav), sampling_rate=16_000), said.get(wav.stem, ""))
            for wav in sorted((RECORDED / folder).glob("*.wav"))
        ]
    return out


def synthetic(voices: tuple[str, ...] = ESPEAK_VOICES) -> dict[str, list[tuple[np.ndarray, str]]]:
    """espeak voice -> [(samples, sentence)] for each of :data:`SENTENCES`."""
    return {voice: [(speak(voice, text), text) for text in SENTENCES] for voice in voices}
