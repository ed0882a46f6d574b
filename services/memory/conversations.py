"""Each session's conversation in Redis: open, then sealed (closing) until its encounter is written,
then discarded. Every transition is one Lua script, so a replica killed between two calls
never leaves a half-made conversation; any replica can carry on from what it finds.

Keys (``shared.streams.MemoryKeys``): a session's open conversation is a hash (id, session,
t_start, t_last: speech time, t_seen: when memory last handled something of it) with
``:segments`` (segment id -> JSON) and ``:faces`` (person -> evidence). Sealing renames the
three under the encounter's id and moves the id from the open set to the closing set.
"""

import json
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import redis

from services.memory.repository import text
from shared.retention import oldest_unfinished
from shared.streams import MemoryKeys

# ARGV[1..4]: the session's open key, the session, the closing key's prefix and suffix.
_COMMON = """
local key, session, closing_pre, closing_post = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local open_set, closing_set = ARGV[5], ARGV[6]
local function open(eid, t)
  if redis.call('HSETNX', key, 'id', eid) == 1 then
    redis.call('HSET', key, 'session', session, 't_start', t, 't_last', t)
    redis.call('SADD', open_set, session)
  end
end
local function seal()
  local eid = redis.call('HGET', key, 'id')
  if eid then
    local closing = closing_pre .. eid .. closing_post
    redis.call('HSET', key, 'session', session)
    for _, suffix in ipairs({'', ':segments', ':faces'}) do
      if redis.call('EXISTS', key .. suffix) == 1 then
        redis.call('RENAME', key .. suffix, closing .. suffix)
      end
    end
    redis.call('SADD', closing_set, eid)
  end
  redis.call('SREM', open_set, session)
end
"""
# ARGV[7..]: new id, face time, person, evidence, now
SEEN = (
    _COMMON
    + """
open(ARGV[7], ARGV[8])
redis.call('ZINCRBY', key .. ':faces', ARGV[10], ARGV[9])
redis.call('HSET', key, 't_seen', ARGV[11])
"""
)
# ARGV[7..]: new id, segment id, segment JSON, t_start, t_end, gap, now
HEARD = (
    _COMMON
    + """
local t_last = redis.call('HGET', key, 't_last')
if t_last and tonumber(ARGV[10]) - tonumber(t_last) > tonumber(ARGV[12]) then seal() end
open(ARGV[7], ARGV[10])
redis.call('HSET', key .. ':segments', ARGV[8], ARGV[9])
local last = redis.call('HGET', key, 't_last')
if tonumber(ARGV[11]) > tonumber(last) then last = ARGV[11] end
redis.call('HSET', key, 't_last', last, 't_seen', ARGV[13])
"""
)
# ARGV[7..]: now, gap. Returns 1 if it sealed the conversation.
SEAL_IF_QUIET = (
    _COMMON
    + """
local times = redis.call('HMGET', key, 't_last', 't_seen')
local latest = 0
for _, t in ipairs(times) do if t and tonumber(t) > latest then latest = tonumber(t) end end
if tonumber(ARGV[7]) - latest > tonumber(ARGV[8]) then seal() return 1 end
return 0
"""
)


@dataclass(frozen=True)
class Closing:
    """An ended conversation waiting to be written as an encounter."""

    id: str
    session: str
    t_start: float
    segments: list[dict[str, Any]]
    """Oldest first: id, t_start, t_end, text."""
    people: list[str]
    """Persons seen in it, the one with the most evidence first."""


class Conversations:
    """Each session's conversation in progress and the ended ones not yet written."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._seen = client.register_script(SEEN)
        self._heard = client.register_script(HEARD)
        self._seal_if_quiet = client.register_script(SEAL_IF_QUIET)
        pre, post = MemoryKeys.closing("\0").split("\0")
        self._closing_affix = [pre, post, MemoryKeys.OPEN_SESSIONS, MemoryKeys.CLOSING]

    def _args(self, session: str) -> list[str]:
        return [MemoryKeys.open_encounter(session), session, *self._closing_affix]

    @staticmethod
    def _new_id(session: str) -> str:
        return f"e-{session}-{uuid.uuid4().hex[:8]}"

    def known_session(self, session: str) -> bool:
        """Whether capture announced this session."""
        return bool(self.redis.sismember(MemoryKeys.SESSIONS, session))

    def seen(self, session: str, pid: str, evidence: float, t: float, now: float) -> None:
        """``pid`` was in view at ``t`` (opening the conversation if there is none)."""
        self._seen(args=[*self._args(session), self._new_id(session), repr(t), pid, evidence, repr(now)])

    def heard(self, session: str, segment: dict[str, Any], gap_s: float, now: float) -> None:
        """A transcript segment (id, t_start, t_end, text). Speech starting more than ``gap_s``
        after the conversation's last ends it first, and starts the next."""
        self._heard(args=[
            *self._args(session), self._new_id(session), segment["id"], json.dumps(segment),
            repr(segment["t_start"]), repr(segment["t_end"]), gap_s, repr(now),
        ])  # fmt: skip

    def open_sessions(self) -> list[str]:
        return sorted(text(s) for s in self.redis.smembers(MemoryKeys.OPEN_SESSIONS))

    def seal_if_quiet(self, session: str, now: float, gap_s: float) -> bool:
        """End the session's conversation if nothing was said or handled for ``gap_s``."""
        return bool(self._seal_if_quiet(args=[*self._args(session), repr(now), gap_s]))

    def closing_ids(self) -> list[str]:
        return sorted(text(e) for e in self.redis.smembers(MemoryKeys.CLOSING))

    def closing(self, eid: str) -> Closing | None:
        """An ended conversation; ``None`` if it is gone (written and discarded by another replica)."""
        key = MemoryKeys.closing(eid)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.hvals(key + ":segments")
            pipe.zrevrange(key + ":faces", 0, -1)
            raw, segments, people = pipe.execute()
        if not raw:
            self.redis.srem(MemoryKeys.CLOSING, eid)
            return None
        state = {text(k): text(v) for k, v in raw.items()}
        return Closing(
            id=eid, session=state["session"], t_start=float(state["t_start"]),
            segments=sorted((json.loads(s) for s in segments), key=lambda s: s["t_start"]),
            people=[text(p) for p in people],
        )  # fmt: skip

    def discard(self, eid: str) -> None:
        """The ended conversation is written (or had nothing to write): its state goes."""
        closing = MemoryKeys.closing(eid)
        with self.redis.pipeline() as pipe:
            pipe.delete(closing, closing + ":segments", closing + ":faces")
            pipe.srem(MemoryKeys.CLOSING, eid)
            pipe.execute()

    def forget_person(self, pid: str) -> None:
        """Remove ``pid`` from the people seen in every open and closing conversation."""
        for eid in self.closing_ids():
            self.redis.zrem(MemoryKeys.closing(eid) + ":faces", pid)
        for session in self.open_sessions():
            self.redis.zrem(MemoryKeys.open_encounter(session) + ":faces", pid)

    def lock(self, session: str) -> AbstractContextManager[Any]:
        """Held while a session's encounter is recorded, so two replicas ticking at once record it once.
        A replica killed holding it blocks the session for 10 s at most."""
        return self.redis.lock(MemoryKeys.session_lock(session), timeout=10, blocking_timeout=30)

    def oldest_unfinished(self, stream: str, group: str) -> float | None:
        """When the oldest entry of ``stream`` that ``group`` has not finished was written."""
        return oldest_unfinished(self.redis, stream, group)
