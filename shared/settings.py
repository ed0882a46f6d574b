"""Settings every service shares. Each service subclasses :class:`ServiceSettings`."""

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.streams import StreamCaps, StreamNames

DEFAULT_REDIS_URL = "redis://127.0.0.1:6380/0"


class SettingsGroup(BaseModel):
    """A nested group of settings; field docstrings are their documentation (``.env.example``)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")


class ConsumerSettings(SettingsGroup):
    """How the shared consumer loop reads, retries and gives up."""

    batch_size: int = Field(16, ge=1)
    """Entries per XREADGROUP call."""
    block_ms: int = Field(1000, ge=1)
    """How long one XREADGROUP waits for new entries."""
    claim_idle_ms: int = Field(30_000, ge=1)
    """An entry pending longer than this is taken over from its (crashed or failed) consumer."""
    claim_every_s: float = Field(5.0, gt=0)
    """How often XAUTOCLAIM runs."""
    max_deliveries: int = Field(3, ge=1)
    """After this many failed deliveries an entry goes to the dead-letter stream."""
    max_field_bytes: int = Field(8 * 1024 * 1024, ge=1)
    """A field larger than this is refused before the handler sees it."""
    dedupe_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    """How long a message's "done" record is kept: the window in which a redelivery is recognised."""
    heartbeat_ttl_s: int = Field(30, ge=2)
    """The health key expires this long after the loop last turned."""
    backoff_max_s: float = Field(10.0, gt=0)
    """Upper bound of the exponential wait between reconnect attempts."""


class RetentionSettings(SettingsGroup):
    """How long raw audio and frames are kept (``CONVO_RETENTION__RAW_S=...``)."""

    raw_s: float = Field(3600.0, ge=0)
    """Raw audio segments and camera frames older than this are deleted once every group has acked them."""
    every_s: float = Field(60.0, gt=0)
    """How often capture applies the window to the streams it writes."""


class ServiceSettings(BaseSettings):
    """Settings common to every service, read from ``CONVO_*`` environment variables and ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="CONVO_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    redis_url: str = DEFAULT_REDIS_URL
    """Redis holding the streams. The default is the local stack's own server (``convo up``)."""
    acl_dir: Path | None = None
    """Where ``convo acl`` keeps ``users.acl`` and one password per user. When set, each service
    logs in to Redis as its own user (docs/ARCHITECTURE.md, "Least privilege")."""
    streams: StreamNames = StreamNames()
    """Stream names (``CONVO_STREAMS__TRANSCRIPTS=...``)."""
    caps: StreamCaps = StreamCaps()
    """Approximate MAXLEN per stream (``CONVO_CAPS__FRAMES=...``)."""
    retention: RetentionSettings = RetentionSettings()
    """How long raw audio and frames are kept (``CONVO_RETENTION__RAW_S=...``); ``convo gc``."""
    consumer: ConsumerSettings = ConsumerSettings()
    """The consumer loop's batch, retry and reclaim settings (``CONVO_CONSUMER__MAX_DELIVERIES=...``)."""
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """This replica's name in its consumer group; unique per process by default."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port; none when unset."""
    log_level: str = "INFO"
    """Python logging level."""
    log_format: Literal["json", "text"] = "json"
    """``json``: one object per line with the ids it is about (never payloads); ``text`` for a terminal."""
