"""Chunks of audio and raw frames in; speech segments and the frames taken during speech out."""

import io
import logging
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError
from prometheus_client import Counter

from services.capture.model import Segment, Segmenter, SileroVadModel
from services.capture.settings import SAMPLE_RATE, CaptureSettings, FrameSettings
from shared.schemas import (
    AudioSegmentMessage,
    BadMessageError,
    FrameMessage,
    PartialSegmentMessage,
    StreamMessage,
)

log = logging.getLogger(__name__)

FRAMES_DROPPED = Counter("convo_capture_frames_dropped_total", "Frames not forwarded", ["reason"])
SEGMENTS = Counter("convo_capture_segments_total", "Speech segments published")


class ImageTooLargeError(BadMessageError):
    """A frame over the pixel limit (HTTP 413 rather than 415)."""


def jpeg_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Width and height from a JPEG's header; :class:`BadMessageError` if it is not a usable JPEG."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size = img.format, img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise BadMessageError(f"not an image: {exc}") from None
    if fmt != "JPEG":
        raise BadMessageError(f"image is {fmt}, not JPEG")
    if size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(
            f"image header claims {size[0]}x{size[1]} pixels, over the limit of {max_pixels}"
        )
    return size


@dataclass(frozen=True)
class Shot:
    """A camera frame before the gate: when it was taken, its JPEG and the size its header gives."""

    t: float
    jpeg: bytes
    width: int
    height: int
    ref: str = ""


def pcm16(audio: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] as s16le, the contract of ``audio:segments``."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


@dataclass
class FrameGate:
    """Which frames go on: those taken during speech (give or take ``margin_s``), at most
    ``max_fps`` of them, and one at once when speech starts."""

    settings: FrameSettings
    speaking: bool = False
    last_speech_end: float | None = None
    last_sent: float = float("-inf")
    edge: bool = False
    latest: Shot | None = None
    dropped: dict[str, int] = field(default_factory=dict)

    def speech_started(self, t: float) -> Shot | None:
        """Speech began at ``t``: returns the frame held from just before, if recent enough."""
        self.speaking, self.edge = True, True
        held, self.latest = self.latest, None
        if held is not None and t - held.t <= self.settings.margin_s:
            self.edge, self.last_sent = False, held.t
            return held
        return None

    def speech_ended(self, t: float) -> None:
        self.speaking, self.last_speech_end = False, t

    def admit(self, shot: Shot) -> bool:
        t = shot.t
        during = self.speaking or (
            self.last_speech_end is not None and t <= self.last_speech_end + self.settings.margin_s
        )
        if not during:
            self.latest = shot
            return self.drop("silence")
        if self.edge or t - self.last_sent >= 1.0 / self.settings.max_fps:
            self.edge, self.last_sent = False, t
            return True
        return self.drop("rate")

    def drop(self, reason: str) -> bool:
        """Count a frame not forwarded, by reason (``silence``, ``rate``, ``backpressure``)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        FRAMES_DROPPED.labels(reason).inc()
        return False


class CaptureHandler:
    """Turns one session's audio chunks and frames into stream messages.

    Times are wall-clock: ``t0`` is when the source's first sample was taken, and a
    sample's time is ``t0 + index / 16000``. Audio and frames may arrive from two threads.
    """

    def __init__(
        self, settings: CaptureSettings, session: str, t0: float, vad: SileroVadModel | None = None
    ) -> None:
        self.settings = settings
        self.session = session
        self.t0 = t0
        self.segmenter = Segmenter(settings.vad, (vad or SileroVadModel()).load())
        self.segmenter.vad.reset()
        self.gate = FrameGate(settings.frames)
        self.n_segments = 0
        self.n_frames = 0
        self.n_partials = 0
        self.partial_at = 0
        """Where the last partial ended (samples)."""
        self._lock = threading.Lock()

    def audio(self, chunk: np.ndarray) -> list[StreamMessage]:
        with self._lock:
            was_speaking = self.segmenter.speaking
            out: list[StreamMessage] = [self._segment(s) for s in self.segmenter.feed(chunk)]
            out += self._partial()
            if self.segmenter.speaking and not was_speaking:
                start = self.segmenter.speech_start or 0
                held = self.gate.speech_started(self.t0 + start / SAMPLE_RATE)
                if held is not None:
                    out.append(self._frame(held))
            elif was_speaking and not self.segmenter.speaking:
                self.gate.speech_ended(self.t0 + self.segmenter.pos / SAMPLE_RATE)
            return out

    def _partial(self) -> list[PartialSegmentMessage]:
        """Every ``partial_every_s`` of speech going on, the utterance so far, for live words; none
        once the speech has paused for ``speech_pad_ms`` (longer than the gap between words): the
        pause may be the utterance's end, and its segment, cut ``min_silence_ms`` into it, would
        wait at the transcriber for that partial's decode. One that falls due then goes when
        speech resumes."""
        every = int(self.settings.vad.partial_every_s * SAMPLE_RATE)
        start, pause = self.segmenter.speech_start, self.segmenter.silence_since
        if not every or start is None or self.segmenter.pos - max(start, self.partial_at) < every:
            return []
        if pause is not None and self.segmenter.pos - pause >= self.segmenter.pad:
            return []
        self.partial_at = self.segmenter.pos
        so_far = self.segmenter.so_far()
        assert so_far is not None
        self.n_partials += 1
        segment_id = f"{self.session}-a{self.n_segments + 1:06d}"  # what the utterance will be written as
        return [
            PartialSegmentMessage(
                partial_id=f"{segment_id}-p{self.n_partials}", segment_id=segment_id, session=self.session,
                t_start=round(self.t0 + so_far.start / SAMPLE_RATE, 3),
                t_end=round(self.t0 + so_far.end / SAMPLE_RATE, 3), sample_rate=SAMPLE_RATE,
                audio=pcm16(so_far.audio),
            )
        ]  # fmt: skip

    def flush(self) -> list[StreamMessage]:
        with self._lock:
            return [self._segment(s) for s in self.segmenter.flush()]

    def speaking_since(self) -> float | None:
        """Wall-clock start of the utterance still being cut, if speech is going on."""
        with self._lock:
            start = self.segmenter.speech_start if self.segmenter.speaking else None
            return None if start is None else round(self.t0 + start / SAMPLE_RATE, 3)

    def now(self) -> float:
        """Wall-clock time of the audio heard so far."""
        return self.t0 + self.segmenter.pos / SAMPLE_RATE

    def at(self, offset_s: float) -> float:
        """Wall-clock time of the point ``offset_s`` into the source."""
        return self.t0 + offset_s

    def start_clock(self, t0: float) -> None:
        """The source's first sample is taken now (a live source starts when it is read)."""
        self.t0 = t0

    def drop_frame(self, reason: str) -> int:
        """Count a frame not published (``backpressure``); returns how many so far for that reason."""
        with self._lock:
            self.gate.drop(reason)
            return self.gate.dropped[reason]

    @property
    def dropped(self) -> dict[str, int]:
        """Frames not published so far, by reason."""
        return dict(self.gate.dropped)

    @property
    def frames_published(self) -> int:
        """Frames the gate let through and backpressure did not drop."""
        return self.n_frames - self.gate.dropped.get("backpressure", 0)

    def frame(self, t: float, jpeg: bytes, ref: str = "") -> list[FrameMessage]:
        """A frame taken at wall-clock ``t``; forwarded only if the gate lets it through."""
        shot = Shot(t, jpeg, *jpeg_size(jpeg, self.settings.frames.max_pixels), ref=ref)
        with self._lock:
            return [self._frame(shot)] if self.gate.admit(shot) else []

    def _segment(self, seg: Segment) -> AudioSegmentMessage:
        self.n_segments += 1
        SEGMENTS.inc()
        return AudioSegmentMessage(
            segment_id=f"{self.session}-a{self.n_segments:06d}", session=self.session,
            t_start=round(self.t0 + seg.start / SAMPLE_RATE, 3),
            t_end=round(self.t0 + seg.end / SAMPLE_RATE, 3),
            sample_rate=SAMPLE_RATE, audio=pcm16(seg.audio),
        )  # fmt: skip

    def _frame(self, shot: Shot) -> FrameMessage:
        self.n_frames += 1
        log.debug("frame %s from %s forwarded", self.n_frames, shot.ref)
        return FrameMessage(
            frame_id=f"{self.session}-f{self.n_frames:06d}", session=self.session, t=round(shot.t, 3),
            width=shot.width, height=shot.height, image=shot.jpeg,
        )  # fmt: skip
