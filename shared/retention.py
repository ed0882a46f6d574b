"""Retention: raw audio and frames go after a time window; the other streams keep their caps.

A trim never removes an entry some consumer group has not acknowledged yet: the cut-off
is the older of "now minus the window" and each group's oldest pending (or next
undelivered) entry. Speech waiting for a stopped transcriber is kept, however old.
"""

import time
from dataclasses import dataclass

import redis

from shared.settings import ServiceSettings
from shared.streams import stream_id

RAW = ("audio_segments", "audio_partials", "frames")


@dataclass(frozen=True)
class Trimmed:
    """What one trim did to one stream."""

    stream: str
    before: int
    removed: int
    held_by: tuple[str, ...] = ()
    """Groups whose unacknowledged entries kept the trim short of its target."""


def needed_by(client: redis.Redis, stream: str) -> dict[str, str]:
    """Per group, the oldest entry id it still needs: its oldest pending, else its next undelivered."""
    out = {}
    for group in client.xinfo_groups(stream):
        name = group["name"].decode()
        if group["pending"]:
            out[name] = client.xpending(stream, name)["min"].decode()
            continue
        after = client.xrange(stream, min=b"(" + group["last-delivered-id"], count=1)
        if after:  # a group that has read everything needs nothing
            out[name] = after[0][0].decode()
    return out


def oldest_unfinished(client: redis.Redis, stream: str, group: str) -> float | None:
    """Write time (epoch s) of the oldest entry ``group`` has not acknowledged; ``None`` if none."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return None
    for g in groups:
        if g["name"].decode() != group:
            continue
        if g["pending"]:
            return stream_id(client.xpending(stream, group)["min"])[0] / 1000
        if g.get("lag") != 0:
            try:
                after = client.xrange(stream, min=f"({g['last-delivered-id'].decode()}", count=1)
            except redis.exceptions.NoPermissionError:  # a watcher may not read entries: a bound
                return stream_id(g["last-delivered-id"])[0] / 1000
            return stream_id(after[0][0])[0] / 1000 if after else None
    return None


def trim_to(client: redis.Redis, stream: str, target: str, before: int) -> Trimmed:
    """XTRIM MINID ``target``, or less far where a group still needs an older entry."""
    needed = needed_by(client, stream)
    holding = tuple(sorted(g for g, i in needed.items() if stream_id(i) < stream_id(target)))
    min_id = min([target, *needed.values()], key=stream_id)
    removed = client.xtrim(stream, minid=min_id, approximate=False)
    return Trimmed(stream, before, removed, holding)


def trim_window(client: redis.Redis, stream: str, max_age_s: float) -> Trimmed:
    """Delete entries older than ``max_age_s`` that every group has acknowledged."""
    before = client.xlen(stream)
    if not before:
        return Trimmed(stream, 0, 0)
    return trim_to(client, stream, f"{int((time.time() - max_age_s) * 1000)}-0", before)


def trim_cap(client: redis.Redis, stream: str, cap: int) -> Trimmed:
    """Cut ``stream`` to ``cap`` entries exactly (writes cap it only roughly), keeping what a group needs."""
    before = client.xlen(stream)
    if before <= cap:
        return Trimmed(stream, before, 0)
    [(last_over, _)] = client.xrange(stream, count=before - cap)[-1:]  # XADD's ~MAXLEN keeps this small
    ms, seq = stream_id(last_over)
    return trim_to(client, stream, f"{ms}-{seq + 1}", before)


def apply_window(client: redis.Redis, settings: ServiceSettings, window_s: float) -> list[Trimmed]:
    """The retention window on the raw streams (capture does this every ``retention.every_s``)."""
    return [trim_window(client, getattr(settings.streams, attr), window_s) for attr in RAW]


def gc(client: redis.Redis, settings: ServiceSettings, window_s: float) -> list[Trimmed]:
    """Everything retention does: the window on raw streams, the caps on every other stream."""
    out = apply_window(client, settings, window_s)
    for attr in type(settings.streams).model_fields:
        if attr not in RAW:
            out.append(trim_cap(client, getattr(settings.streams, attr), getattr(settings.caps, attr)))
    return out
