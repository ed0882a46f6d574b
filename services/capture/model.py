"""Silero VAD (the packaged ONNX model) and the state machine that turns its output into segments."""

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from services.capture.settings import CHUNK, SAMPLE_RATE, VadSettings


class SileroVadModel:
    """Speech probability of each 512-sample chunk; keeps the model's recurrent state between calls."""

    def __init__(self) -> None:
        self.model = None
        self._lock = threading.Lock()

    def load(self) -> "SileroVadModel":
        with self._lock:
            if self.model is None:
                from silero_vad import load_silero_vad

                self.model = load_silero_vad(onnx=True)
            return self

    def reset(self) -> None:
        self.load().model.reset_states()  # type: ignore[union-attr]

    def predict(self, chunk: np.ndarray) -> float:
        self.load()
        return self._predict(chunk)

    def _predict(self, chunk: np.ndarray) -> float:
        import torch

        return float(self.model(torch.from_numpy(chunk), SAMPLE_RATE).item())  # type: ignore[misc]


@dataclass(frozen=True)
class Segment:
    """Speech found by the segmenter, in samples from the start of the source."""

    start: int
    end: int
    audio: np.ndarray  # float32 in [-1, 1]


class Segmenter:
    """Cuts a stream of 512-sample chunks into speech segments.

    Speech starts when the VAD probability reaches ``threshold`` and ends after
    ``min_silence_ms`` below ``threshold - gap``. Segments keep ``speech_pad_ms`` of audio on
    both sides, shorter ones than ``min_speech_ms`` are dropped, and speech longer than
    ``max_segment_s`` is cut with ``overlap_s`` of overlap.
    """

    def __init__(self, settings: VadSettings, vad: SileroVadModel) -> None:
        self.s = settings
        self.vad = vad
        ms = SAMPLE_RATE // 1000
        self.pad = settings.speech_pad_ms * ms
        self.min_speech = settings.min_speech_ms * ms
        self.min_silence = settings.min_silence_ms * ms
        self.max_len = int(settings.max_segment_s * SAMPLE_RATE)
        self.overlap = int(settings.overlap_s * SAMPLE_RATE)
        # The audio kept in memory: everything since the current segment's padded start.
        self.buffer: deque[np.ndarray] = deque()
        self.buffer_start = 0
        self.pos = 0
        self.speech_start: int | None = None
        self.silence_since: int | None = None

    @property
    def speaking(self) -> bool:
        return self.speech_start is not None

    def feed(self, chunk: np.ndarray) -> list[Segment]:
        """Take one chunk (512 float32 samples); return the segments it completes."""
        prob = self.vad.predict(chunk)
        self.buffer.append(chunk)
        self.pos += len(chunk)
        if self.speech_start is None:
            if prob >= self.s.threshold:
                self.speech_start = self.pos - len(chunk)
                self.silence_since = None
            else:
                self._trim(self.pos - self.pad - CHUNK)
            return []
        if prob < self.s.threshold - self.s.neg_threshold_gap:
            if self.silence_since is None:
                self.silence_since = self.pos - len(chunk)
            if self.pos - self.silence_since >= self.min_silence:
                return self._close(min(self.silence_since + self.pad, self.pos))
        else:
            self.silence_since = None
        if self.pos - max(self.speech_start - self.pad, 0) >= self.max_len:
            return [self._cut()]
        return []

    def so_far(self) -> Segment | None:
        """The utterance going on, from its padded start to now (``None`` in silence)."""
        if self.speech_start is None:
            return None
        start = max(self.speech_start - self.pad, self.buffer_start)
        return Segment(start, self.pos, self._slice(start, self.pos))

    def flush(self) -> list[Segment]:
        """End of the source: close the segment in progress."""
        return self._close(self.pos) if self.speech_start is not None else []

    def _close(self, end: int) -> list[Segment]:
        assert self.speech_start is not None
        start = max(self.speech_start - self.pad, self.buffer_start)
        speech = (self.silence_since or end) - self.speech_start
        self.speech_start = self.silence_since = None
        segments = [Segment(start, end, self._slice(start, end))] if speech >= self.min_speech else []
        self._trim(end)
        return segments

    def _cut(self) -> Segment:
        """Speech is too long: emit exactly ``max_segment_s`` and go on from ``overlap`` before the cut."""
        assert self.speech_start is not None
        start = max(self.speech_start - self.pad, self.buffer_start)
        end = min(start + self.max_len, self.pos)
        segment = Segment(start, end, self._slice(start, end))
        self.speech_start = end - self.overlap + self.pad  # its padded start is end - overlap
        self._trim(end - self.overlap)
        return segment

    def _slice(self, start: int, end: int) -> np.ndarray:
        audio = np.concatenate(list(self.buffer)) if self.buffer else np.zeros(0, np.float32)
        return audio[start - self.buffer_start : end - self.buffer_start]

    def _trim(self, keep_from: int) -> None:
        """Forget audio before ``keep_from`` (whole chunks only)."""
        while self.buffer and self.buffer_start + len(self.buffer[0]) <= keep_from:
            self.buffer_start += len(self.buffer.popleft())
