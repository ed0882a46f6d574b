"""Who is in view in each session, and which of them the wearer is talking to (the interlocutor).

Every face adds evidence to its person in the session's view: how large it is in the frame,
how near the centre, how sure the detector is, and how long it stays (the sum decays with a
half-life of the view time, so a person who stays gains, one who left fades). A person the
wearer knows weighs ``known_bonus`` times more. The card goes to the interlocutor, except
that a known person in view is never hidden behind a stranger: then the best-ranked known
person's card shows, and the strangers are one line on it ("and 14 people you don't know").
The conversation goes to the interlocutor over the whole conversation's evidence, where a
stranger is taken over a known person only when they far outweigh them (:data:`DOMINANCE`:
someone filling the view while a friend stands at its edge).
"""

import json
import math
import re
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import redis

from services.memory.repository import text
from services.memory.voices import decide
from shared.streams import MemoryKeys

# ARGV: view key, person, t, evidence, half-life, known ('1'/'0'), forget-after (s), match score
# (0: keep the last). Returns the view: person -> JSON {t, e, known, score}.
SEE = """
local key, pid, t, e, half = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local old = redis.call('HGET', key, pid)
local s = {t = t, e = e, known = ARGV[6] == '1', score = tonumber(ARGV[8])}
if old then
  local was = cjson.decode(old)
  if t >= was.t then
    s.e = was.e * math.pow(0.5, (t - was.t) / half) + e
  else
    s.e, s.t = was.e + e, was.t
  end
  if s.score == 0 then s.score = was.score or 0 end
end
redis.call('HSET', key, pid, cjson.encode(s))
redis.call('EXPIRE', key, math.floor(tonumber(ARGV[7])) + 1)
local view = redis.call('HGETALL', key)
local out = {}
for i = 1, #view, 2 do
  local v = cjson.decode(view[i + 1])
  if t - v.t > tonumber(ARGV[7]) then
    redis.call('HDEL', key, view[i])
  else
    out[#out + 1] = view[i]
    out[#out + 1] = view[i + 1]
  end
end
return out
"""


@dataclass(frozen=True)
class Sighting:
    """One person in a session's view."""

    pid: str
    t: float
    """When they were last seen (speech time)."""
    evidence: float
    known: bool
    score: float = 0.0
    """The last match score of their face."""


@dataclass(frozen=True)
class Shown:
    """The card a session's overlay shows: whose, and when it was sent (speech time)."""

    pid: str
    t: float


def evidence(bbox: list[float], width: int, height: int, det_score: float) -> float:
    """How much one face says "this is who the wearer is looking at": its share of the frame,
    weighted toward the centre, times the detector's confidence."""
    x1, y1, x2, y2 = bbox
    width, height = width or max(x2, 1.0), height or max(y2, 1.0)
    share = max(x2 - x1, 0) * max(y2 - y1, 0) / (width * height)
    off = math.hypot((x1 + x2) / 2 / width - 0.5, (y1 + y2) / 2 / height - 0.5)
    return share * (0.25 + 0.75 * max(0.0, 1 - 2 * off)) * det_score


def rank(view: list[Sighting], now: float, view_s: float, known_bonus: float) -> list[Sighting]:
    """The people in view at ``now``, the likeliest interlocutor first."""
    present = [s for s in view if now - s.t <= view_s]
    return sorted(present, key=lambda s: (-s.evidence * (known_bonus if s.known else 1.0), s.pid))


HEARD_WITH = 4
"""Voices kept per face and session, heard while that face was alone in view."""

DOMINANCE = 4.0
"""A stranger is taken for the one talked to over a known person in view only with this many times
their weighted evidence (they fill the view); otherwise the known person is."""


def pick(weights: dict[str, float], known: set[str], dominance: float = DOMINANCE) -> str | None:
    """Who the wearer is with, from each person's weighted evidence: the interlocutor, unless they
    are a stranger and someone known is in view without being outweighed ``dominance`` times."""
    order = sorted(weights, key=lambda p: (-weights[p], p))
    best_known = next((p for p in order if p in known), None)
    if not order or best_known is None or order[0] == best_known:
        return order[0] if order else None
    return order[0] if weights[order[0]] >= dominance * weights[best_known] else best_known


def named(name: str, texts: list[str]) -> bool:
    """Whether a person called ``name`` was named (by their first name) in any of ``texts``."""
    first = name.split()[0] if name.strip() else ""
    return bool(first) and any(re.search(rf"\b{re.escape(first)}\b", t, re.I) for t in texts)


def subject(
    ranked: list[Sighting], known_bonus: float, said: Collection[str] = (), named_bonus: float = 1.0
) -> Sighting | None:
    """Whose card shows: the interlocutor, or the best-ranked known person in view when the
    interlocutor is a stranger; ``said``: the persons named aloud just now."""
    weights = {
        s.pid: s.evidence * (known_bonus if s.known else 1.0) * (named_bonus if s.pid in said else 1.0)
        for s in ranked
    }
    chosen = pick(weights, {s.pid for s in ranked if s.known}, dominance=math.inf)
    return next((s for s in ranked if s.pid == chosen), None)


def _sighting(pid: bytes, raw: bytes) -> Sighting:
    state = json.loads(raw)
    return Sighting(
        text(pid), float(state["t"]), float(state["e"]), bool(state["known"]), state.get("score", 0)
    )


class Views:
    """Each session's view and the card on its overlay, in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._see = client.register_script(SEE)

    def see(
        self, session: str, pid: str, t: float, weight: float, known: bool, view_s: float, score: float = 0.0
    ) -> list[Sighting]:
        """Add a sighting; returns the session's view (people seen in the last few view times)."""
        key = MemoryKeys.view(session)
        reply = self._see(args=[key, pid, repr(t), weight, view_s, "1" if known else "0", 10 * view_s, score])
        return [_sighting(reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]

    def view(self, session: str) -> list[Sighting]:
        return [_sighting(p, raw) for p, raw in self.redis.hgetall(MemoryKeys.view(session)).items()]

    def shown(self, session: str) -> Shown | None:
        raw = self.redis.hmget(MemoryKeys.card(session), "pid", "t")
        return Shown(text(raw[0]), float(raw[1])) if raw[0] is not None else None

    def show(self, session: str, pid: str, t: float, ttl_s: float) -> None:
        self.redis.hset(MemoryKeys.card(session), mapping={"pid": pid, "t": repr(t)})
        self.redis.expire(MemoryKeys.card(session), int(ttl_s) + 1)

    def set_context(self, session: str, words: list[str], ttl_s: float) -> None:
        """What the session's speech is likely to hold now, for the transcriber."""
        self.redis.set(MemoryKeys.context(session), json.dumps(words[:50]), ex=max(int(ttl_s), 1))

    def heard(self, session: str, t: float, words: str) -> None:
        """Keep what was just said in the session (the last few lines), for the names in it."""
        key = MemoryKeys.heard(session)
        with self.redis.pipeline() as pipe:
            pipe.lpush(key, json.dumps({"t": t, "text": words}))
            pipe.ltrim(key, 0, 19)
            pipe.expire(key, 3600)
            pipe.execute()

    def heard_since(self, session: str, t: float) -> list[str]:
        lines = (json.loads(x) for x in self.redis.lrange(MemoryKeys.heard(session), 0, -1))
        return [line["text"] for line in lines if line["t"] >= t]

    def voiced(self, session: str, pid: str, t: float) -> None:
        """A known person's voice was heard in the session at ``t``."""
        self._mark(MemoryKeys.voiced(session), [pid], repr(t))

    def speaking(self, session: str, since: float) -> dict[str, float]:
        """The known persons heard since ``since``, with when they were last heard."""
        return self._since(MemoryKeys.voiced(session), since)

    def heard_with(self, session: str, pid: str, segment_id: str, voice: bytes) -> None:
        """The other side's voice (a normed float32 embedding), heard in ``segment_id`` while
        ``pid``'s face was the only one in view: theirs, most likely. A face keeps
        :data:`HEARD_WITH` of them, in slots picked by the segment (a redelivered one takes its
        own slot again), so a session's hash stays small however long it goes on."""
        slot = zlib.crc32(segment_id.encode()) % HEARD_WITH
        key = MemoryKeys.heard_with(session)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, f"{pid} {slot}", voice)
            pipe.expire(key, 3600)
            pipe.execute()

    def whose_voice(
        self, session: str, voice: np.ndarray, pids: Collection[str], same: float, margin: float
    ) -> str | None:
        """Which of ``pids`` (faces in view) says ``voice``, by the voices heard while each was alone
        in view: the best, at least ``same`` and ``margin`` above the next; else ``None``."""
        fields = [(pid, f"{pid} {slot}") for pid in pids for slot in range(HEARD_WITH)]
        if not fields:
            return None
        best: dict[str, float] = {}
        found = self.redis.hmget(MemoryKeys.heard_with(session), [f for _, f in fields])
        for (pid, _), data in zip(fields, found, strict=True):
            if data is not None and len(data) == voice.nbytes:
                best[pid] = max(best.get(pid, -1.0), float(np.frombuffer(data, "<f4") @ voice))
        return decide(best, same, margin)[0]

    def maybe(self, session: str, pids: Collection[str], t: float, face: str) -> None:
        """A face in view at ``t`` scored borderline against these known persons; ``face`` is the
        person it was given meanwhile (a stranger, most often), or ``""``."""
        self._mark(MemoryKeys.maybe(session), pids, json.dumps({"t": t, "face": face}))

    def maybes(self, session: str, since: float) -> dict[str, str]:
        """The known persons a face in view since ``since`` may be, each with the person that face
        was given."""
        marks = {text(p): json.loads(m) for p, m in self.redis.hgetall(MemoryKeys.maybe(session)).items()}
        # a bare time is a mark written before the face was kept with it (it lives an hour)
        marks = {p: m if isinstance(m, dict) else {"t": m, "face": ""} for p, m in marks.items()}
        return {p: m["face"] for p, m in sorted(marks.items()) if m["t"] >= since}

    def _mark(self, key: str, pids: Collection[str], value: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=dict.fromkeys(pids, value))
            pipe.expire(key, 3600)
            pipe.execute()

    def _since(self, key: str, since: float) -> dict[str, float]:
        marks = {text(p): float(t) for p, t in self.redis.hgetall(key).items()}
        return {p: t for p, t in marks.items() if t >= since}

    def frame_done(self, frame_id: str, face_id: str, faces_in_frame: int) -> bool:
        """Note a face of the frame as handled; True once all of them are (or the count is unknown)."""
        if faces_in_frame <= 1:
            return True
        key = MemoryKeys.frame_faces(frame_id)
        with self.redis.pipeline() as pipe:
            pipe.sadd(key, face_id)
            pipe.scard(key)
            pipe.expire(key, 3600)
            _, seen, _ = pipe.execute()
        return int(seen) >= faces_in_frame

    def forget(self, pid: str) -> None:
        """Remove a person from every session's view, the voices heard with them, and the card
        that shows them."""
        for pattern in (MemoryKeys.view("*"), MemoryKeys.voiced("*"), MemoryKeys.maybe("*")):
            for key in self.redis.scan_iter(pattern):
                self.redis.hdel(key, pid)
        for key in self.redis.scan_iter(MemoryKeys.heard_with("*")):
            self.redis.hdel(key, *(f"{pid} {slot}" for slot in range(HEARD_WITH)))
        for key in self.redis.scan_iter(MemoryKeys.card("*")):  # what was heard holds no person id
            if self.redis.hget(key, "pid") == pid.encode():
                self.redis.delete(key)
