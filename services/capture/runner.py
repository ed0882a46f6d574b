"""Runs capture: replays files to their end, or listens to the mic/stdin until stopped."""

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import redis
from prometheus_client import Counter

from services.capture.handler import CaptureHandler
from services.capture.model import SileroVadModel
from services.capture.settings import CHUNK, SAMPLE_RATE, CaptureSettings
from services.capture.sources import (
    RawFrame,
    SourceError,
    audio_files,
    chunked,
    image_dir_frames,
    mic_chunks,
    read_audio_file,
    recording_seconds,
    stdin_chunks,
    video_frames,
)
from shared.publisher import Publisher
from shared.retention import apply_window
from shared.schemas import (
    AudioSegmentMessage,
    BadMessageError,
    FrameMessage,
    PartialSegmentMessage,
    StreamMessage,
)

log = logging.getLogger(__name__)
PARTIALS_DROPPED = Counter(
    "convo_capture_partials_dropped_total",
    "Partials not sent because segments waited for the transcriber or voice stage",
)


class CaptureRunner:
    """One capture session: sources in, messages published."""

    def __init__(
        self, settings: CaptureSettings, publisher: Publisher, vad: SileroVadModel | None = None
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.stop = publisher.stop
        self.session = settings.session or datetime.now().strftime("%Y%m%d-%H%M%S")
        self.handler = CaptureHandler(settings, self.session, time.time(), vad)
        streams = settings.streams
        self.frames_backlog = publisher.backlog(streams.frames)
        self.speech_backlog = publisher.backlog(streams.audio_segments)
        self._warned = self._told = float("-inf")
        self._speaking: float | None = None
        self._speaking_lock = threading.Lock()  # audio and the HTTP frames publish from two threads
        publisher.announce_session(self.session)

    def publish(self, messages: Sequence[StreamMessage]) -> list[StreamMessage]:
        """Publish what backpressure lets through; returns what was published."""
        sent = []
        for msg in messages:
            if isinstance(msg, FrameMessage) and self._face_lags():
                continue
            if isinstance(msg, PartialSegmentMessage) and self.speech_backlog():
                PARTIALS_DROPPED.inc()  # segments wait for a stage: live words are the first to go
                continue
            if isinstance(msg, AudioSegmentMessage):
                self._warn_if_speech_waits()
            self.publisher.publish(msg)
            sent.append(msg)
        self._mark_speech()
        return sent

    def _mark_speech(self) -> None:
        """Memory must not end a conversation while an utterance is still being cut: keep the
        session's speaking mark in step with the segmenter (a forced cut starts a new mark)."""
        with self._speaking_lock:
            since = self.handler.speaking_since()
            if since != self._speaking:
                self.publisher.speaking(self.session, since, self.settings.vad.max_segment_s + 10)
                self._speaking = since

    def submit_frame(self, t: float, jpeg: bytes) -> list[FrameMessage]:
        """A frame from the HTTP ingest: gated, published, and returned if it was forwarded."""
        return [m for m in self.publish(self.handler.frame(t, jpeg, "http")) if isinstance(m, FrameMessage)]

    def _face_lags(self) -> bool:
        """Backpressure: drop (and count) the frame while the face stage is behind."""
        waiting = self.frames_backlog()
        if waiting <= self.settings.frames.max_backlog:
            return False
        dropped = self.handler.drop_frame("backpressure")
        if time.monotonic() - self._told > 10:
            self._told = time.monotonic()
            log.warning(
                "face stage is %d frames behind; dropping frames (%d so far)", waiting, dropped,
                extra={"backlog": waiting, "dropped": dropped},
            )  # fmt: skip
        return True

    def _warn_if_speech_waits(self) -> None:
        waiting = self.speech_backlog()
        if waiting > self.settings.audio.warn_backlog and time.monotonic() - self._warned > 30:
            self._warned = time.monotonic()
            log.warning(
                "speech waits: %d segments not yet transcribed; none is dropped", waiting,
                extra={"backlog": waiting, "stream": self.settings.streams.audio_segments},
            )  # fmt: skip

    def _retention(self) -> None:
        """Apply the retention window to the raw streams until stopped."""
        every = self.settings.retention.every_s
        while not self.stop.wait(every):
            try:
                for t in apply_window(self.publisher.redis, self.settings, self.settings.retention.raw_s):
                    if t.removed or t.held_by:
                        log.info(
                            "retention: %s %d -> %d entries", t.stream, t.before, t.before - t.removed,
                            extra={"stream": t.stream, "removed": t.removed, "held_by": list(t.held_by)},
                        )  # fmt: skip
            except redis.RedisError as exc:
                log.warning("retention skipped: %s", exc)

    # -- replay ----------------------------------------------------------------------

    def replay(self, source: Path) -> None:
        """Play every file of ``source`` as one timeline, frames interleaved by their time."""
        frames = self._replay_frames()
        pending = next(frames, None)
        offset = 0  # samples played so far, over all files
        for path in audio_files(source):
            try:
                audio = read_audio_file(path)
            except SourceError as exc:
                self.publisher.dead_letter("capture", str(path), str(exc), session=self.session)
                continue
            log.info("replaying %s (%.1f s)", path.name, len(audio) / SAMPLE_RATE)
            for chunk in chunked(audio):
                if self.stop.is_set():
                    return
                t = offset / SAMPLE_RATE
                while pending is not None and pending.t_offset <= t:
                    self._replay_frame(pending)
                    pending = next(frames, None)
                if self.settings.audio.realtime:
                    self.stop.wait(max(self.handler.at(t) - time.time(), 0))
                self.publish(self.handler.audio(chunk))
                offset += CHUNK
        self.publish(self.handler.flush())

    def _replay_frames(self) -> Iterator[RawFrame]:
        source = self.settings.frames.source
        if source in (None, "", "none", "http"):
            return iter(())
        if Path(source).is_dir():
            return image_dir_frames(Path(source), self.settings.frames.replay_fps)
        return video_frames(source, self.settings.audio.realtime)

    def _replay_frame(self, frame: RawFrame) -> None:
        try:
            self.publish(self.handler.frame(self.handler.at(frame.t_offset), frame.jpeg, frame.ref))
        except BadMessageError as exc:
            self.publisher.dead_letter("capture", frame.ref, str(exc), session=self.session)

    # -- live ------------------------------------------------------------------------

    def listen(self, chunks: Iterator[np.ndarray]) -> None:
        """Feed live chunks until the source ends or stop is set; frames come from other threads."""
        self.handler.start_clock(time.time())
        for chunk in chunks:
            if self.stop.is_set():
                break
            self.publish(self.handler.audio(chunk))
        self.publish(self.handler.flush())

    def camera(self, source: str) -> None:
        """Read a camera continuously, stamping frames with this machine's clock."""
        for frame in video_frames(source, realtime=True):
            if self.stop.is_set():
                return
            self.publish(self.handler.frame(time.time(), frame.jpeg, frame.ref))

    def run(self) -> None:
        """Start the configured sources and return when the audio source ends or on stop."""
        audio, frames = self.settings.audio.source, self.settings.frames.source
        threading.Thread(target=self._retention, daemon=True, name="retention").start()
        threads = []
        if frames == "http":
            threads.append(threading.Thread(target=self._serve_ingest, daemon=True))
        elif frames and frames.startswith("camera:"):
            threads.append(threading.Thread(target=self.camera, args=(frames,), daemon=True))
        for thread in threads:
            thread.start()
        try:
            if audio == "mic":
                self.listen(mic_chunks(self.settings.audio))
            elif audio == "-":
                self.listen(stdin_chunks())
            elif audio == "none":
                self.stop.wait()
            else:
                if not self.settings.audio.realtime:  # a fast replay ends now: no time in the future
                    self.handler.start_clock(time.time() - recording_seconds(Path(audio)))
                self.replay(Path(audio))
        except SourceError as exc:
            self.publisher.dead_letter("capture", audio, str(exc), session=self.session)
            if threads:
                log.error("no audio (%s); frames are still taken from %s", exc, frames)
                self.stop.wait()
            else:
                raise
        log.info(
            "capture session %s: %d segments, %d frames, frames dropped %s",
            self.session, self.handler.n_segments, self.handler.frames_published, self.handler.dropped,
        )  # fmt: skip

    def _serve_ingest(self) -> None:
        import uvicorn

        from services.capture.ingest import build_ingest_app

        app = build_ingest_app(self.submit_frame, self.settings.frames)
        config = uvicorn.Config(
            app, host=self.settings.frames.http_host, port=self.settings.frames.http_port, log_config=None
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the main thread owns signals
        threading.Thread(
            target=lambda: (self.stop.wait(), setattr(server, "should_exit", True)), daemon=True
        ).start()
        server.run()
