"""Settings of the voice service (``CONVO_VOICE__*``)."""

from pydantic import Field

from shared.settings import ServiceSettings, SettingsGroup


class VoiceModelSettings(SettingsGroup):
    """The speaker encoder: resemblyzer's GE2E model, whose weights ship in its wheel."""

    device: str = "cpu"
    """torch device (``cuda`` on a workstation)."""
    sample_rate: int = 16_000
    """What capture writes; other rates are refused."""
    max_segment_s: float = Field(30.0, gt=0)
    """Longer segments are refused (capture cuts at 20 s by default)."""
    min_speech_s: float = Field(0.3, ge=0)
    """A segment with less voiced audio than this, once silences are trimmed, has no embedding
    worth keeping: it goes to ``dlq`` as "no speech"."""


class VoiceSettings(ServiceSettings):
    """Settings of ``python -m services.voice``."""

    voice: VoiceModelSettings = VoiceModelSettings()
    """Model and limits (``CONVO_VOICE__DEVICE=cuda``)."""
