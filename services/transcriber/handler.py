"""Speech segments in, transcripts out."""

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from prometheus_client import Counter

from services.transcriber.model import Transcription, WhisperSpeechModel, plain_words
from services.transcriber.settings import WhisperSettings
from shared.audio import pcm_to_float
from shared.consumer import BatchedHandler
from shared.schemas import AudioSegmentMessage, BadMessageError, TranscriptMessage

log = logging.getLogger(__name__)

DROPPED = Counter("convo_transcriber_dropped_total", "Segments that gave no transcript", ["reason"])


def words(text: str) -> str:
    """Lower-cased text without punctuation: what the drop rules compare."""
    return " ".join(plain_words(text))


def dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio)))) if len(audio) else 0.0
    return 20 * np.log10(max(rms, 1e-10))


class Context(Protocol):
    """Words a session's speech is likely to hold now (the names of the people in view)."""

    def words(self, session: str) -> list[str]: ...


class TranscriberHandler(BatchedHandler):
    """Transcribes segments; waiting segments go through one batched call on a GPU."""

    def __init__(
        self,
        settings: WhisperSettings,
        model: WhisperSpeechModel | None = None,
        context: Context | None = None,
    ) -> None:
        self.settings = settings
        self.model = model or WhisperSpeechModel(settings)
        self.context = context
        self.dropped: dict[str, int] = {}

    def hotwords(self, session: str) -> str | None:
        """The wearer's vocabulary and the session's context, as one hotwords string for Whisper.
        Comma-separated: as a list of terms tiny.en takes them as words that may come up; run
        together ("Dana Rains Acme") it reads them as a sentence and tends to write it out."""
        found = [*(self.context.words(session) if self.context else []), *self.settings.vocabulary]
        return ", ".join(dict.fromkeys(w for w in found if w)) or None

    def load(self) -> "TranscriberHandler":
        self.model.load()
        return self

    def handle_batch(self, msgs: Sequence[AudioSegmentMessage]) -> list[list[TranscriptMessage] | Exception]:
        results: list[list[TranscriptMessage] | Exception] = []
        good: list[tuple[int, AudioSegmentMessage, np.ndarray]] = []
        for i, msg in enumerate(msgs):
            try:
                audio = pcm_to_float(msg, self.settings.sample_rate, self.settings.max_segment_s)
                good.append((i, msg, audio))
                results.append([])
            except BadMessageError as exc:
                results.append(exc)
        hotwords = [self.hotwords(msg.session) for _, msg, _ in good]
        texts = self.model.predict_batch([audio for _, _, audio in good], hotwords)
        for (i, msg, audio), text in zip(good, texts, strict=True):
            results[i] = self._publishable(msg, audio, text)
        return results

    def _publishable(
        self, msg: AudioSegmentMessage, audio: np.ndarray, out: Transcription
    ) -> list[TranscriptMessage]:
        reason = None
        level = dbfs(audio)
        if not words(out.text):
            reason = "empty"  # nothing at all, or only punctuation
        elif level < self.settings.silence_dbfs and words(out.text) in self.settings.hallucinations:
            reason = "hallucination"
        if reason:
            self.dropped[reason] = self.dropped.get(reason, 0) + 1
            DROPPED.labels(reason).inc()
            log.info("segment=%s dropped=%s level=%.0fdBFS", msg.segment_id, reason, level)
            return []
        return [
            TranscriptMessage(
                segment_id=msg.segment_id, session=msg.session, t_start=msg.t_start, t_end=msg.t_end,
                text=out.text, language=out.language, confidence=round(out.confidence, 4),
                model=self.model.name,
            )
        ]  # fmt: skip
