"""Settings of the overlay web server (``CONVO_OVERLAY__*``)."""

from pydantic import Field, SecretStr

from services.memory.settings import MatchSettings
from services.trainer.settings import DatasetSettings
from shared.settings import ServiceSettings, SettingsGroup


class WebSettings(SettingsGroup):
    """Where the overlay listens and who may change memory through it."""

    host: str = "127.0.0.1"
    """Bind address. The people page holds private memory: widen it only behind your own auth."""
    port: int = Field(8088, ge=1, le=65535)
    """HTTP port of the overlay and the people page."""
    admin_token: SecretStr | None = None
    """Bearer token for the people API. Unset: one is made on first start, kept in Redis and printed."""
    ping_s: float = Field(15.0, gt=0)
    """Server-Sent Events keep-alive comment interval."""
    block_ms: int = Field(5000, ge=1)
    """How long one XREAD for a browser tab waits before checking the tab is still there."""


class OverlaySettings(ServiceSettings):
    """Settings of ``python -m services.overlay``."""

    overlay: WebSettings = WebSettings()
    """The web server (``CONVO_OVERLAY__PORT=8088``)."""
    match: MatchSettings = MatchSettings()
    """Face matching, shared with memory: ``forget`` uses its threshold to find a person's faces."""
    dataset: DatasetSettings = DatasetSettings()
    """The trainer's rows, which ``forget`` removes a person from."""
