"""``convo status``: per stage (consumer group), what a user watching the stack wants to know:
consumers alive, pending, lag, dead letters and entries per second; and each stream's length."""

import time
from collections import Counter
from dataclasses import dataclass

import redis
from rich.table import Table

from shared.settings import ServiceSettings
from shared.streams import heartbeat_key


@dataclass(frozen=True)
class GroupState:
    stream: str
    group: str
    read: int
    """Entries the group has read so far (``entries-read``), for the rate."""
    pending: int
    lag: int | None
    consumers: int
    alive: int
    dead: int


def _s(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def sample(client: redis.Redis, settings: ServiceSettings) -> tuple[list[GroupState], dict[str, int]]:
    """Every group's state now, and every stream's length."""
    dead = Counter(_s(f.get(b"group", b"")) for _, f in client.xrange(settings.streams.dlq))
    groups, lengths = [], {}
    for stream in settings.streams.model_dump().values():
        if not client.exists(stream):
            continue
        lengths[stream] = int(client.xlen(stream))
        for g in client.xinfo_groups(stream):
            name = _s(g["name"])
            alive = sum(1 for _ in client.scan_iter(heartbeat_key(name), count=1000))
            groups.append(
                GroupState(
                    stream, name, int(g.get("entries-read") or 0), int(g["pending"]),
                    None if g.get("lag") is None else int(g["lag"]), int(g["consumers"]), alive, dead[name],
                )
            )  # fmt: skip
    return groups, lengths


def table(
    before: list[GroupState], after: list[GroupState], lengths: dict[str, int], seconds: float, url: str
) -> Table:
    """Fits 100 columns: one row per stage and input stream."""
    earlier = {(g.stream, g.group): g.read for g in before}
    out = Table(title=f"stages on {url}", caption=_lengths(lengths), caption_justify="left")
    out.add_column("stage")
    out.add_column("reads")
    for col in ("alive", "pending", "lag", "dead", "per s"):
        out.add_column(col, justify="right")
    for g in sorted(after, key=lambda g: (g.group, g.stream)):
        rate = (g.read - earlier.get((g.stream, g.group), g.read)) / seconds if seconds else 0.0
        alive = f"{g.alive}" if g.alive or not g.consumers else "[bold red]0[/]"
        lag = "?" if g.lag is None else f"[yellow]{g.lag}[/]" if g.lag else "0"
        dead = f"[red]{g.dead}[/]" if g.dead else "0"
        out.add_row(g.group, g.stream, alive, str(g.pending), lag, dead, f"{rate:.1f}")
    return out


def _lengths(lengths: dict[str, int]) -> str:
    return "streams: " + ", ".join(f"{s} {n}" for s, n in lengths.items()) if lengths else "no streams yet"


def measure(client: redis.Redis, settings: ServiceSettings, seconds: float) -> Table:
    """Two samples ``seconds`` apart, for the rates."""
    before, _ = sample(client, settings)
    time.sleep(seconds)
    after, lengths = sample(client, settings)
    return table(before, after, lengths, seconds, settings.redis_url)
