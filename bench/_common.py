"""Helpers for the benchmarks: a private redis-server and the one-line result."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.redis_server import RedisServer
from shared.settings import ConsumerSettings, ServiceSettings


@contextmanager
def private_redis() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port, without AOF so disk speed does not enter the figures."""
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp), appendonly=False) as server:
        yield server


def bench_settings(server: RedisServer, batch_size: int = 16) -> ServiceSettings:
    return ServiceSettings(
        redis_url=server.url, consumer_name="bench", consumer=ConsumerSettings(batch_size=batch_size)
    )


def report(name: str, **figures: float) -> None:
    """The last line of every benchmark: ``bench NAME key=value ...``."""
    print(f"bench {name} " + " ".join(f"{k}={v:.3g}" for k, v in figures.items()), flush=True)
