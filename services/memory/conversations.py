"""Each session's speech and sightings in Redis, and the ended conversations cut from them.

A session's open state holds every segment heard and every person seen that no ended
conversation has taken yet. Where one conversation ends and the next begins is decided in
speech time, from the segments' own times (``handler.py``), never from the order in which
transcripts arrive: with several transcriber replicas a later segment can come first.
An ended conversation is sealed: its segments and the sightings in its time move under
the encounter's id (closing) until the encounter is written, then it is discarded.

Every step is one Lua script, so a replica killed between two calls never leaves a
half-made state, and no lock is needed to add to a session. Times the scripts stamp
(``at``, ``t_seen``) come from the Redis server's clock, the clock of stream entry ids.

Keys (``shared.streams.MemoryKeys``): ``open_encounter(session)`` is a hash (session,
t_seen), with ``:segments`` (segment id -> JSON: id, t_start, t_end, text, at) and ``:faces``
(``<person>|<second>`` -> evidence). ``closing(eid)`` has the same three.
"""

import json
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import redis

from services.memory.repository import text
from shared.retention import oldest_unfinished
from shared.schemas import ConversationMessage, dead_letter
from shared.streams import MemoryKeys, StreamCaps, StreamNames

_NOW = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
"""
# KEYS: none (ACL-checked per call). ARGV: open key, session, open set, then per script.
SEEN = (
    _NOW
    + """
local key, session = ARGV[1], ARGV[2]
redis.call('HINCRBYFLOAT', key .. ':faces', ARGV[4], ARGV[5])
redis.call('HSET', key, 'session', session, 't_seen', tostring(now()))
redis.call('SADD', ARGV[3], session)
"""
)
# ARGV[4..]: segment id, segment JSON (without ``at``). Returns the time it was handled.
HEARD = (
    _NOW
    + """
local key, session, t = ARGV[1], ARGV[2], now()
local segment = cjson.decode(ARGV[5])
segment['at'] = t
redis.call('HSET', key .. ':segments', ARGV[4], cjson.encode(segment))
redis.call('HSET', key, 'session', session, 't_seen', tostring(t))
redis.call('SADD', ARGV[3], session)
return tostring(t)
"""
)
# ARGV[4..]: eid, closing key, closing set, t_lo, t_hi, last ('1': the session's state goes too),
# t_start, t_end, the hand-over stream, its cap, the hand-over's fields (a JSON list), then the
# segment ids. Sightings (by the second) from before t_lo belong to no conversation left open and
# go; those up to t_hi go with the conversation. The hand-over is written with the state it hands
# over, once, so the scribe hears of every ended conversation exactly when it can read it.
SEAL = """
local key, session, eid, closing = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local t_lo, t_hi = tonumber(ARGV[7]), tonumber(ARGV[8])
local fresh = redis.call('EXISTS', closing) == 0
if fresh then
  redis.call('HSET', closing, 'id', eid, 'session', session, 't_start', ARGV[10], 't_end', ARGV[11])
end
for i = 15, #ARGV do
  local segment = redis.call('HGET', key .. ':segments', ARGV[i])
  if segment then
    redis.call('HSET', closing .. ':segments', ARGV[i], segment)
    redis.call('HDEL', key .. ':segments', ARGV[i])
  end
end
local faces = redis.call('HGETALL', key .. ':faces')
for i = 1, #faces, 2 do
  local second = tonumber(string.match(faces[i], '|(%-?[%d%.]+)$'))
  if second <= t_hi then
    if second + 1 > t_lo then redis.call('HINCRBYFLOAT', closing .. ':faces', faces[i], faces[i + 1]) end
    redis.call('HDEL', key .. ':faces', faces[i])
  end
end
if ARGV[9] == '1' and redis.call('HLEN', key .. ':segments') == 0 then
  redis.call('DEL', key, key .. ':faces')
  redis.call('SREM', ARGV[3], session)
end
redis.call('SADD', ARGV[6], eid)
if fresh then
  redis.call('XADD', ARGV[12], 'MAXLEN', '~', ARGV[13], '*', unpack(cjson.decode(ARGV[14])))
end
"""
# KEYS: none. ARGV: a ``:faces`` key, the person, and their new id ('' to remove them).
REPOINT = """
local faces = redis.call('HGETALL', ARGV[1])
local prefix = ARGV[2] .. '|'
for i = 1, #faces, 2 do
  if string.sub(faces[i], 1, #prefix) == prefix then
    if ARGV[3] ~= '' then
      redis.call('HINCRBYFLOAT', ARGV[1], ARGV[3] .. '|' .. string.sub(faces[i], #prefix + 1), faces[i + 1])
    end
    redis.call('HDEL', ARGV[1], faces[i])
  end
end
"""


@dataclass(frozen=True)
class OpenState:
    """What a session has that no ended conversation has taken yet."""

    session: str
    t_seen: float
    """When memory last handled something of it (server clock)."""
    segments: list[dict[str, Any]]
    """Oldest first (by speech time): id, t_start, t_end, text, at (when it was handled)."""


SPEAKERS_TTL_S = 7 * 86400
HANDOVER, HANDOVER_CAP = StreamNames(), StreamCaps()
"""The hand-over stream's default name and cap; memory passes its configured ones."""


@dataclass(frozen=True)
class Closing:
    """An ended conversation waiting to be written as an encounter."""

    id: str
    session: str
    t_start: float
    t_end: float
    segments: list[dict[str, Any]]
    """Oldest first."""
    people: dict[str, float]
    """Persons seen in it, with their evidence (weighted, summed over the conversation)."""
    failures: int = 0
    """Tries that failed to write it so far (the scribe retries by redelivery)."""


class Conversations:
    """Each session's open state and the ended conversations not yet written."""

    def __init__(
        self,
        client: redis.Redis,
        handover: str = HANDOVER.conversations,
        cap: int = HANDOVER_CAP.conversations,
    ) -> None:
        self.redis = client
        self.handover, self.cap = handover, cap
        self._seen = client.register_script(SEEN)
        self._heard = client.register_script(HEARD)
        self._seal = client.register_script(SEAL)
        self._repoint = client.register_script(REPOINT)

    @staticmethod
    def _args(session: str) -> list[str]:
        return [MemoryKeys.open_encounter(session), session, MemoryKeys.OPEN_SESSIONS]

    def now(self) -> float:
        """The Redis server's clock, the one stream entry ids and these states are stamped with."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1e6

    def voice(self, session: str, segment_id: str, speaker: str, score: float) -> None:
        """Who said a segment, by voice (``me``/``them``); kept a week, as long as any conversation
        of the session could still be waiting to be written."""
        key = MemoryKeys.speakers(session)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, segment_id, json.dumps({"speaker": speaker, "score": round(score, 4)}))
            pipe.expire(key, SPEAKERS_TTL_S)
            pipe.execute()

    def voiceprint(self, session: str, segment_id: str, vector: bytes) -> None:
        """The other person's voice in a segment, kept until their conversation is written."""
        key = MemoryKeys.voiceprints(session)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, segment_id, vector)
            pipe.expire(key, SPEAKERS_TTL_S)
            pipe.execute()

    def voiceprint_of(self, session: str, segment_id: str) -> bytes | None:
        """The other person's voice in a segment, if the voice stage has been heard from."""
        return self.redis.hget(MemoryKeys.voiceprints(session), segment_id)

    def take_voiceprints(self, session: str, segment_ids: Sequence[str]) -> dict[str, bytes]:
        """The voiceprints of these segments, removed from the session's keeping."""
        if not segment_ids:
            return {}
        key = MemoryKeys.voiceprints(session)
        raw = self.redis.hmget(key, list(segment_ids))
        found = {sid: data for sid, data in zip(segment_ids, raw, strict=True) if data}
        if found:
            self.redis.hdel(key, *found)
        return found

    def speakers(self, session: str, segment_ids: Sequence[str]) -> list[str]:
        """``me``, ``them`` or ``""`` (no voice known) for each segment."""
        if not segment_ids:
            return []
        raw = self.redis.hmget(MemoryKeys.speakers(session), list(segment_ids))
        return [json.loads(r)["speaker"] if r else "" for r in raw]

    def speaking(self, session: str) -> bool:
        """Whether capture is still cutting an utterance of the session (its speaking mark)."""
        return bool(self.redis.exists(MemoryKeys.speaking(session)))

    def known_session(self, session: str) -> bool:
        """Whether capture announced this session."""
        return bool(self.redis.sismember(MemoryKeys.SESSIONS, session))

    # -- adding --------------------------------------------------------------------------

    def seen(self, session: str, pid: str, evidence: float, t: float) -> None:
        """``pid`` was in view at speech time ``t``, with this much evidence (box area)."""
        self._seen(args=[*self._args(session), f"{pid}|{int(t)}", evidence])

    def heard(self, session: str, segment: dict[str, Any]) -> float:
        """A transcript segment (id, t_start, t_end, text); returns when it was handled."""
        return float(self._heard(args=[*self._args(session), segment["id"], json.dumps(segment)]))

    # -- deciding ------------------------------------------------------------------------

    def open_sessions(self) -> list[str]:
        return sorted(text(s) for s in self.redis.smembers(MemoryKeys.OPEN_SESSIONS))

    def open_state(self, session: str) -> OpenState | None:
        key = MemoryKeys.open_encounter(session)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(key, "t_seen")
            pipe.hvals(key + ":segments")
            t_seen, segments = pipe.execute()
        if t_seen is None:
            self.redis.srem(MemoryKeys.OPEN_SESSIONS, session)
            return None
        ordered = sorted((json.loads(s) for s in segments), key=lambda s: (s["t_start"], s["id"]))
        return OpenState(session, float(t_seen), ordered)

    def seal(
        self, session: str, segments: Sequence[dict[str, Any]], window: tuple[float, float], last: bool
    ) -> str:
        """End a conversation: these segments, and the sightings in ``window`` (speech time).
        ``last``: nothing else of the session is open, so its state goes. Returns the encounter id,
        made from the first segment's id, so that two replicas sealing it at once agree. The scribe
        hears of it on the hand-over stream (:class:`ConversationMessage`)."""
        eid = f"e-{segments[0]['id']}" if segments else f"e-{session}-silent"
        t_start = min(s["t_start"] for s in segments) if segments else window[0]
        t_end = max(s["t_end"] for s in segments) if segments else window[1]
        handover = ConversationMessage(
            encounter_id=eid, session=session, t_start=t_start, t_end=t_end, segments=len(segments)
        )
        fields = [str(x) for kv in handover.to_fields().items() for x in kv]
        self._seal(args=[
            *self._args(session), eid, MemoryKeys.closing(eid), MemoryKeys.CLOSING,
            repr(window[0]), repr(window[1]), "1" if last else "0", repr(t_start), repr(t_end),
            self.handover, self.cap, json.dumps(fields), *(s["id"] for s in segments),
        ])  # fmt: skip
        return eid

    # -- ended conversations -------------------------------------------------------------

    def closing_ids(self) -> list[str]:
        return sorted(text(e) for e in self.redis.smembers(MemoryKeys.CLOSING))

    def closing(self, eid: str) -> Closing | None:
        """An ended conversation; ``None`` if it is gone (written and discarded by another replica)."""
        key = MemoryKeys.closing(eid)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.hvals(key + ":segments")
            pipe.hgetall(key + ":faces")
            raw, segments, faces = pipe.execute()
        if not raw:
            self.redis.srem(MemoryKeys.CLOSING, eid)
            return None
        state = {text(k): text(v) for k, v in raw.items()}
        evidence: dict[str, float] = defaultdict(float)
        for field, value in faces.items():
            evidence[text(field).rsplit("|", 1)[0]] += float(value)
        return Closing(
            id=eid, session=state["session"], t_start=float(state["t_start"]), t_end=float(state["t_end"]),
            segments=sorted((json.loads(s) for s in segments), key=lambda s: (s["t_start"], s["id"])),
            people=dict(evidence), failures=int(state.get("failures", 0)),
        )  # fmt: skip

    def failed(self, eid: str) -> int:
        """Count a failed try at writing it; returns the count."""
        return int(self.redis.hincrby(MemoryKeys.closing(eid), "failures", 1))

    def discard(self, eid: str) -> None:
        """The ended conversation is written (or had nothing to write): its state goes."""
        closing = MemoryKeys.closing(eid)
        with self.redis.pipeline() as pipe:
            pipe.delete(closing, closing + ":segments", closing + ":faces")
            pipe.srem(MemoryKeys.CLOSING, eid)
            pipe.execute()

    def bury(self, c: Closing, error: str, dlq: str, cap: int) -> None:
        """An ended conversation that cannot be written goes to ``dlq`` with its state, and the
        others go on without it."""
        letter = dead_letter(
            "memory:conversations", c.id, error,
            {"session": c.session, "segments": json.dumps(c.segments), "people": json.dumps(list(c.people))},
            group="scribe", failures=str(c.failures),
        )  # fmt: skip
        closing = MemoryKeys.closing(c.id)
        with self.redis.pipeline() as pipe:
            pipe.xadd(dlq, letter, maxlen=cap, approximate=True)
            pipe.delete(closing, closing + ":segments", closing + ":faces")
            pipe.srem(MemoryKeys.CLOSING, c.id)
            pipe.execute()

    # -- corrections -------------------------------------------------------------------

    def repoint(self, pid: str, to: str | None) -> None:
        """``pid`` is now ``to`` (a merge), or nobody (a forget): in every open and ended conversation."""
        keys = [MemoryKeys.open_encounter(s) for s in self.open_sessions()]
        keys += [MemoryKeys.closing(e) for e in self.closing_ids()]
        for key in keys:
            self._repoint(args=[key + ":faces", pid, to or ""])

    def lock(self, session: str) -> AbstractContextManager[Any]:
        """Held while a session's encounter is recorded, so two replicas ticking at once record it once.
        A replica killed holding it blocks the session for 10 s at most."""
        return self.redis.lock(MemoryKeys.session_lock(session), timeout=10, blocking_timeout=30)

    def oldest_unfinished(self, stream: str, group: str) -> float | None:
        """When the oldest entry of ``stream`` that ``group`` has not finished was written."""
        return oldest_unfinished(self.redis, stream, group)
