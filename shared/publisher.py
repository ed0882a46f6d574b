"""Writing to streams from a producer (capture), with the same caps and dead letters as the loop."""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from shared.schemas import StreamMessage, dead_letter, now
from shared.settings import ServiceSettings
from shared.streams import NEVER_TRIMMED_ON_WRITE, MemoryKeys, heartbeat_key

log = logging.getLogger(__name__)
T = TypeVar("T")


class Backlog:
    """How many entries of a stream its slowest group has not finished (unread plus unacked).

    Read from XINFO GROUPS at most every ``every_s``: a frame at 30 fps must not cost a round trip.
    No group yet means no reader to protect, so nothing is held back.
    """

    def __init__(self, client: redis.Redis, stream: str, every_s: float = 0.2) -> None:
        self.client, self.stream, self.every_s = client, stream, every_s
        self._at, self._value = float("-inf"), 0

    def __call__(self) -> int:
        if time.monotonic() - self._at >= self.every_s:
            self._at = time.monotonic()
            try:
                groups = self.client.xinfo_groups(self.stream)
            except redis.ResponseError:  # no such stream yet
                groups = []
            except redis.RedisError:
                return self._value  # the publisher waits out the outage
            length = None
            values = []
            for g in groups:
                lag = g.get("lag")
                if lag is None:  # Redis cannot tell after deletions in range: count the whole stream
                    length = self.client.xlen(self.stream) if length is None else length
                    lag = length
                values.append(lag + g["pending"])
            self._value = max(values, default=0)
        return self._value


class Publisher:
    """XADDs messages to their configured stream; waits out a Redis outage instead of dropping."""

    def __init__(
        self, client: redis.Redis, settings: ServiceSettings, stop: threading.Event | None = None
    ) -> None:
        self.redis = client
        self.settings = settings
        self.stop = stop or threading.Event()

    def publish(self, msg: StreamMessage) -> str | None:
        """Append ``msg``; retries with backoff while Redis is away. ``None`` only if stopped meanwhile."""
        stream = getattr(self.settings.streams, msg.STREAM)
        cap = None if msg.STREAM in NEVER_TRIMMED_ON_WRITE else getattr(self.settings.caps, msg.STREAM)
        return self._xadd(stream, msg.to_fields(), cap)

    def backlog(self, stream: str, every_s: float = 0.2) -> Backlog:
        """How far behind the readers of ``stream`` are, for backpressure."""
        return Backlog(self.redis, stream, every_s)

    def dead_letter(self, source: str, ref: str, error: str, **fields: str) -> None:
        """Record input that could not be turned into messages (an unreadable file, say)."""
        log.error("source=%s ref=%s outcome=dlq error=%s", source, ref, error)
        self._xadd(self.settings.streams.dlq, dead_letter(source, ref, error, fields), self.settings.caps.dlq)

    def announce_session(self, session: str) -> None:
        """Register a capture session, so that readers can tell its entries from strays."""
        self._retry("announce the session", lambda: self.redis.sadd(MemoryKeys.SESSIONS, session))

    def speaking(self, session: str, since: float | None, ttl_s: float) -> None:
        """Say that speech is going on in ``session`` since ``since``, or (``None``) no longer."""
        key = MemoryKeys.speaking(session)
        if since is None:
            self._retry("end the speaking mark", lambda: self.redis.delete(key))
        else:
            self._retry("mark speech in progress", lambda: self.redis.set(key, repr(since), ex=round(ttl_s)))

    def heartbeat(self, group: str, name: str) -> None:
        """Keep ``group``'s heartbeat key for this process fresh from a daemon thread (for ``--check``)."""
        ttl = self.settings.consumer.heartbeat_ttl_s

        def beat() -> None:
            while not self.stop.is_set():
                try:
                    self.redis.set(heartbeat_key(group, name), repr(now()), ex=ttl)
                except redis.RedisError as exc:
                    log.warning("heartbeat failed: %s", exc)
                self.stop.wait(ttl / 3)

        threading.Thread(target=beat, daemon=True, name="heartbeat").start()

    def _xadd(self, stream: str, fields: dict, cap: int | None) -> str | None:
        entry_id = self._retry(
            f"hold the entry for {stream}",
            lambda: self.redis.xadd(stream, fields, maxlen=cap, approximate=cap is not None),
        )
        return None if entry_id is None else entry_id.decode()

    def _retry(self, what: str, call: Callable[[], T]) -> T | None:
        """``call()``, again with backoff while Redis is away; ``None`` only if stopped meanwhile."""
        backoff = 0.1
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); %s, retry in %.1fs", exc, what, backoff)
                if self.stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, self.settings.consumer.backoff_max_s)
