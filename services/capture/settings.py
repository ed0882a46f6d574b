"""Settings of the capture service (``CONVO_AUDIO__*``, ``CONVO_VAD__*``, ``CONVO_FRAMES__*``)."""

from pydantic import Field

from shared.settings import ServiceSettings, SettingsGroup

SAMPLE_RATE = 16_000
CHUNK = 512  # Silero VAD's window at 16 kHz: 32 ms


class AudioSettings(SettingsGroup):
    """Where speech comes from."""

    source: str = "mic"
    """``mic`` (pyaudio), ``-`` (raw s16le 16 kHz mono PCM on stdin), an audio file (WAV/FLAC/MP3/...)
    or a directory of them (played in name order)."""
    realtime: bool = False
    """Replay files at real-time speed; otherwise as fast as the VAD runs."""
    mic_device: int | None = None
    """pyaudio input device index; ``None`` is the system default.
    ``python -m services.capture --devices`` lists them."""
    mic_rate: int = 16_000
    """Rate the mic is opened at; resampled to 16 kHz when it differs."""
    warn_backlog: int = Field(50, ge=1)
    """Segments are never dropped; past this many waiting for the transcriber, capture warns."""


class VadSettings(SettingsGroup):
    """Silero VAD and how its decisions become segments."""

    threshold: float = Field(0.5, gt=0, lt=1)
    """Speech probability that starts speech."""
    neg_threshold_gap: float = Field(0.15, ge=0, lt=1)
    """Speech continues until the probability drops below ``threshold - gap`` (hysteresis)."""
    min_speech_ms: int = Field(250, ge=0)
    """Shorter bursts are not segments (clicks, coughs)."""
    min_silence_ms: int = Field(500, ge=32)
    """A pause at least this long ends a segment."""
    speech_pad_ms: int = Field(200, ge=0)
    """Audio kept before the start and after the end of speech."""
    max_segment_s: float = Field(20.0, ge=1, le=30)
    """Speech longer than this is cut (Whisper's window is 30 s)."""
    overlap_s: float = Field(0.5, ge=0, le=5)
    """A cut segment's successor starts this much before the cut, so no word is lost at the seam."""
    partial_every_s: float = Field(1.0, ge=0, le=30)
    """While speech goes on, its audio so far is sent this often (``audio:partials``) for live
    words on the overlay; 0 turns partials off. 1.0 s rather than 1.5 s: a word reaches the page
    1.47-1.49 s after it is said at p95 against 1.73-1.90 s (bench/e2e.py), and the transcript
    after the speech ends no later (p95 1.64-1.67 s against 1.57-1.64 s). 0.5 s, in a later
    sitting: words p95 1.47-1.56 s against 1.81-1.86 s, but a segment then waited 0.10 s at the
    transcriber against 0.07 s and text p95 was 1.71-1.75 s against 1.59-1.69 s: partials would
    delay the transcript."""


class FrameSettings(SettingsGroup):
    """Where frames come from and which of them are forwarded."""

    source: str | None = None
    """``http`` (the ingest endpoint), ``camera:N`` (OpenCV device N), an image directory or a
    video file; ``None`` captures no frames."""
    max_fps: float = Field(2.0, gt=0)
    """At most this many frames per second go to ``frames``."""
    margin_s: float = Field(1.0, ge=0)
    """Frames this long before speech starts or after it ends still count as during speech;
    it also absorbs the skew between the glasses' clock and this machine's."""
    max_backlog: int = Field(8, ge=1)
    """Backpressure: while the face stage has more frames than this waiting (unread plus unacked),
    new frames are dropped and counted (reason ``backpressure``) instead of queued."""
    replay_fps: float = Field(2.0, gt=0)
    """Capture rate assumed for an image directory (one image every 1/fps seconds)."""
    http_host: str = "127.0.0.1"
    """Ingest endpoint bind address."""
    http_port: int = 8077
    """Ingest endpoint port."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Larger uploads get 413."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Frames whose JPEG header claims more pixels get 413."""


class CaptureSettings(ServiceSettings):
    """Settings of ``python -m services.capture``."""

    session: str | None = None
    """Session id stamped on every entry; by default one per start (``YYYYmmdd-HHMMSS``)."""
    audio: AudioSettings = AudioSettings()
    """Audio source (``CONVO_AUDIO__SOURCE=meeting.wav``)."""
    vad: VadSettings = VadSettings()
    """Speech detection and segmenting (``CONVO_VAD__MAX_SEGMENT_S=15``)."""
    frames: FrameSettings = FrameSettings()
    """Frame source and gating (``CONVO_FRAMES__SOURCE=http``)."""
