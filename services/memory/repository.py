"""Persons and encounters in Redis: the one place that knows their keys and parses their hashes.

Every change to a person's views is also written to ``convo:persons:changes`` (in the same
MULTI), so that every replica's face index can follow.
"""

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import redis

from services.memory.extract import Extraction
from services.memory.records import Encounter, Fact, Person
from shared.schemas import embedding_to_bytes
from shared.streams import KEY_PREFIX, MemoryKeys, stream_id

CHANGES = MemoryKeys.CHANGES
CHANGES_CAP = 100_000
LINEAGE_CAP = 100_000
"""Face ids kept per person for forget: as many as the faces stream holds by default."""
FULL_RELOAD = "*"
"""The change that means "reload every person" (a forgotten person's id is written down nowhere)."""
PROFILE_FIELDS = ("name", "company", "role")
# ARGV: person key, name, company. Sets them only where empty; 0 if they had a name already.
INTRODUCE = """
if redis.call('EXISTS', ARGV[1]) == 0 or redis.call('HGET', ARGV[1], 'name') ~= '' then return 0 end
redis.call('HSET', ARGV[1], 'name', ARGV[2])
if ARGV[3] ~= '' and (redis.call('HGET', ARGV[1], 'company') or '') == '' then
  redis.call('HSET', ARGV[1], 'company', ARGV[3])
end
return 1
"""
# ARGV: person key, faces key, changes stream, its cap, person id, thumb, [view id, embedding]
ADD_VIEW = """
if redis.call('EXISTS', ARGV[1]) == 0 then return 0 end
if ARGV[6] ~= '' then redis.call('HSET', ARGV[1], 'thumb', ARGV[6]) end
if ARGV[7] then
  redis.call('HSET', ARGV[2], ARGV[7], ARGV[8])
  redis.call('XADD', ARGV[3], 'MAXLEN', '~', ARGV[4], '*', 'person', ARGV[5])
end
return 1
"""


def text(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def stack(views: dict[bytes, bytes]) -> np.ndarray | None:
    """A person's views (view id -> float32 bytes) as a matrix, oldest first; ``None`` for none."""
    if not views:
        return None
    return np.stack([np.frombuffer(v, dtype="<f4") for _, v in sorted(views.items())])


def new_person_id() -> str:
    return f"p-{uuid.uuid4().hex[:12]}"


def view_id(t: float) -> str:
    """View ids sort by time: the oldest view is trimmed first."""
    return f"v{int(t * 1000):014d}-{uuid.uuid4().hex[:4]}"


# KEYS: person, voices, VOICED, VOICES_VERSION. ARGV: pid, cap, then view id / embedding pairs.
ADD_VOICES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
local names = redis.call('HKEYS', KEYS[2])
table.sort(names)
for i = 1, #names - tonumber(ARGV[2]) do redis.call('HDEL', KEYS[2], names[i]) end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return math.min(#names, tonumber(ARGV[2]))
"""


class PersonRepository:
    """Persons, their face views, facts and encounters."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._add_view = client.register_script(ADD_VIEW)
        self._introduce = client.register_script(INTRODUCE)

    # -- persons ---------------------------------------------------------------------------

    def person_ids(self) -> list[str]:
        """Everyone memory matches faces against: persons and candidates."""
        return sorted(text(p) for p in self.redis.smembers(MemoryKeys.PERSONS))

    def candidate_ids(self) -> list[str]:
        """Faces that are not persons yet, soonest to expire first."""
        return [text(p) for p in self.redis.zrange(MemoryKeys.CANDIDATES, 0, -1)]

    def expired_candidates(self, now: float) -> list[str]:
        return [text(p) for p in self.redis.zrangebyscore(MemoryKeys.CANDIDATES, "-inf", now)]

    def promote(self, pid: str) -> None:
        """A candidate becomes a person (talked to, named, or seen across sessions)."""
        with self.redis.pipeline() as pipe:
            pipe.zrem(MemoryKeys.CANDIDATES, pid)
            pipe.hdel(MemoryKeys.person(pid), "candidate")
            pipe.execute()

    def standing(self, pid: str) -> tuple[bool, bool]:
        """Whether the wearer knows them (named, or talked to before), and whether they are a
        candidate: one round trip, for every face."""
        name, encounters, candidate = self.redis.hmget(
            MemoryKeys.person(pid), "name", "encounters", "candidate"
        )
        return bool(name) or int(encounters or 0) > 0, bool(candidate)

    def note_session(self, pid: str, session: str) -> tuple[int, int]:
        """A candidate seen in ``session``: returns the sessions and frames they were seen in."""
        with self.redis.pipeline() as pipe:
            pipe.sadd(MemoryKeys.sessions_of(pid), session)
            pipe.scard(MemoryKeys.sessions_of(pid))
            pipe.hincrby(MemoryKeys.person(pid), "frames", 1)
            _, sessions, frames = pipe.execute()
        return int(sessions), int(frames)

    def get(self, pid: str) -> Person:
        """A person with their facts and encounter ids; ``KeyError`` if there is no such person."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(MemoryKeys.person(pid))
            pipe.hvals(MemoryKeys.facts(pid))
            pipe.zrange(MemoryKeys.encounters(pid), 0, -1)
            pipe.hlen(MemoryKeys.faces(pid))
            raw, facts, eids, views = pipe.execute()
        if not raw:
            raise KeyError(pid)
        fields = {text(k): v if k == b"thumb" else text(v) for k, v in raw.items()}
        return Person(
            **fields,
            facts=sorted((Fact.model_validate_json(f) for f in facts), key=lambda f: f.t),
            encounter_ids=[text(e) for e in eids],
            views=views,
        )

    def exists(self, pid: str) -> bool:
        return bool(self.redis.exists(MemoryKeys.person(pid)))

    def create(self, vector: np.ndarray, thumb: bytes, t: float, candidate_until: float | None = None) -> str:
        """A new person with one view, a candidate until ``candidate_until`` when given; returns their id."""
        pid = new_person_id()
        with self.redis.pipeline() as pipe:
            self._new_person(pipe, pid, t, thumb)
            if candidate_until is not None:
                pipe.hset(MemoryKeys.person(pid), "candidate", 1)
                pipe.zadd(MemoryKeys.CANDIDATES, {pid: candidate_until})
            pipe.hset(MemoryKeys.faces(pid), view_id(t), embedding_to_bytes(vector))
            self._mark_changed(pipe, pid)
            pipe.execute()
        return pid

    @staticmethod
    def _new_person(pipe: redis.client.Pipeline, pid: str, t: float, thumb: bytes) -> None:
        pipe.sadd(MemoryKeys.PERSONS, pid)
        pipe.hset(MemoryKeys.person(pid), mapping={
            "id": pid, "name": "", "company": "", "role": "", "first_seen": repr(t),
            "last_seen": repr(t), "encounters": 0, "thumb": thumb,
        })  # fmt: skip

    def new_person_lock(self) -> AbstractContextManager[Any]:
        """Held while deciding that a face is nobody yet, so two replicas make one person of it."""
        return self.redis.lock(MemoryKeys.NEW_PERSON_LOCK, timeout=10, blocking_timeout=10)

    def rename(self, pid: str, name: str) -> None:
        """Name them (a named candidate becomes a person)."""
        self.get(pid)  # KeyError if unknown
        self.redis.hset(MemoryKeys.person(pid), "name", name.strip())
        self.promote(pid)

    def introduce(self, pid: str, name: str, company: str | None) -> bool:
        """What they said of themselves, for a person with no name yet; False if they have one."""
        if not self._introduce(args=[MemoryKeys.person(pid), name, company or ""]):
            return False
        self.promote(pid)
        return True

    # -- views -----------------------------------------------------------------------------

    def views(self, pid: str) -> np.ndarray | None:
        """A person's stored views, oldest first; ``None`` for none."""
        return stack(self.redis.hgetall(MemoryKeys.faces(pid)))

    def view_ids(self, pid: str) -> list[str]:
        return sorted(text(v) for v in self.redis.hkeys(MemoryKeys.faces(pid)))

    def all_views(self, pids: list[str], chunk: int = 1000) -> Iterator[dict[str, np.ndarray | None]]:
        """Everyone's views, one round trip per ``chunk`` persons."""
        for start in range(0, len(pids), chunk):
            part = pids[start : start + chunk]
            with self.redis.pipeline(transaction=False) as pipe:
                for pid in part:
                    pipe.hgetall(MemoryKeys.faces(pid))
                yield {pid: stack(v) for pid, v in zip(part, pipe.execute(), strict=True)}

    def add_view(self, pid: str, vector: np.ndarray | None, thumb: bytes, t: float) -> None:
        """Keep a new look (``vector``) and the newest thumbnail, either of them optional; only while
        the person exists, so a match still in flight cannot bring a forgotten person back."""
        args = [MemoryKeys.person(pid), MemoryKeys.faces(pid), CHANGES, CHANGES_CAP, pid, thumb]
        if vector is not None:
            args += [view_id(t), embedding_to_bytes(vector)]
        self._add_view(args=args)

    def trim_views(self, pid: str, keep: int) -> None:
        """Keep the newest ``keep`` views of a person."""
        keys = sorted(self.redis.hkeys(MemoryKeys.faces(pid)))
        extra = len(keys) - keep
        if extra > 0:
            with self.redis.pipeline() as pipe:
                pipe.hdel(MemoryKeys.faces(pid), *keys[:extra])
                self._mark_changed(pipe, pid)
                pipe.execute()

    # -- who changed -------------------------------------------------------------------------

    @staticmethod
    def _mark_changed(pipe: redis.client.Pipeline, pid: str) -> None:
        pipe.xadd(CHANGES, {"person": pid}, maxlen=CHANGES_CAP, approximate=True)

    def last_change(self) -> bytes:
        last = self.redis.xrevrange(CHANGES, count=1)
        return last[0][0] if last else b"0-0"

    def changes_since(self, seen: bytes) -> tuple[bytes, set[str] | None]:
        """The newest change id and the persons changed after ``seen``; ``None`` for "reload all"
        (someone was forgotten, or the changes were trimmed past ``seen``)."""
        changes = self.redis.xrange(CHANGES, min=b"(" + seen)
        if not changes:
            return seen, set()
        oldest = self.redis.xrange(CHANGES, count=1)[0][0]
        changed = {text(fields[b"person"]) for _, fields in changes}
        trimmed = seen != b"0-0" and stream_id(oldest) > stream_id(seen)
        return changes[-1][0], None if trimmed or FULL_RELOAD in changed else changed

    # -- frames --------------------------------------------------------------------------------

    def frame_claims(self, frame_id: str) -> dict[str, str]:
        """Person -> face id, for the faces of this frame given a person so far."""
        return {text(p): text(f) for p, f in self.redis.hgetall(MemoryKeys.frame_persons(frame_id)).items()}

    def claim_in_frame(self, frame_id: str, pid: str, face: str, t: float) -> bool:
        """Give ``pid`` to this face of the frame, unless another face of it has them. A face given
        to a person is noted in their lineage, which forget follows."""
        key = MemoryKeys.frame_persons(frame_id)
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, pid, face)
            pipe.hget(key, pid)
            pipe.expire(key, 3600)
            added, owner, _ = pipe.execute()
        mine = bool(added) or (face != "?" and text(owner) == face)
        if mine and face != "?":
            with self.redis.pipeline() as pipe:
                pipe.zadd(MemoryKeys.lineage(pid), {face: t})
                pipe.zremrangebyrank(MemoryKeys.lineage(pid), 0, -LINEAGE_CAP - 1)
                pipe.execute()
        return mine

    def lineage(self, pid: str) -> set[str]:
        """The face ids memory gave this person (the newest ``LINEAGE_CAP``)."""
        return {text(f) for f in self.redis.zrange(MemoryKeys.lineage(pid), 0, -1)}

    # -- encounters --------------------------------------------------------------------------------

    def encounter(self, eid: str) -> Encounter | None:
        raw = {text(k): text(v) for k, v in self.redis.hgetall(MemoryKeys.encounter(eid)).items()}
        if not raw:
            return None
        for field in ("topics", "open_threads", "segments"):
            raw[field] = json.loads(raw.get(field) or "[]")
        return Encounter.model_validate(raw)

    def last_encounter(self, pid: str) -> Encounter | None:
        last = self.redis.zrevrange(MemoryKeys.encounters(pid), 0, 0)
        return self.encounter(text(last[0])) if last else None

    def has_encounters(self, pid: str) -> bool:
        return self.redis.zcard(MemoryKeys.encounters(pid)) > 0

    def record_encounter(self, encounter: Encounter, extraction: Extraction) -> bool:
        """Store a finished conversation and fold what it said into the person's profile.

        False if it was recorded already (a redelivery). ``KeyError`` if there is no such person.
        """
        pid, eid = encounter.person_id, encounter.id
        person = self.redis.hgetall(MemoryKeys.person(pid))
        if not person:
            raise KeyError(pid)
        if self.redis.zscore(MemoryKeys.encounters(pid), eid) is not None:
            return False
        updates: dict[str, Any] = {
            "last_seen": repr(max(encounter.t_end, float(person.get(b"last_seen", 0))))
        }
        for field in PROFILE_FIELDS:
            value = getattr(extraction, field)
            if value and not text(person.get(field.encode(), b"")):
                updates[field] = value
        facts = [Fact(text=f, kind="fact", source=eid, t=encounter.t_end) for f in extraction.facts]
        facts += [Fact(text=x, kind="topic", source=eid, t=encounter.t_end) for x in extraction.topics]
        with self.redis.pipeline() as pipe:
            pipe.hset(MemoryKeys.person(pid), mapping=updates)
            pipe.hincrby(MemoryKeys.person(pid), "encounters", 1)
            pipe.hdel(MemoryKeys.person(pid), "candidate")  # talked to: a person now
            pipe.zrem(MemoryKeys.CANDIDATES, pid)
            for fact in facts:
                pipe.hsetnx(MemoryKeys.facts(pid), f"{fact.kind}:{fact.text.lower()}", fact.model_dump_json())
            pipe.zadd(MemoryKeys.encounters(pid), {eid: encounter.t_end})
            pipe.hset(MemoryKeys.encounter(eid), mapping=self._encounter_fields(encounter))
            pipe.execute()
        return True

    @staticmethod
    def _encounter_fields(e: Encounter) -> dict[str, str]:
        fields = e.model_dump(exclude={"t_start", "t_end", "topics", "open_threads", "segments"})
        return fields | {
            "t_start": repr(e.t_start), "t_end": repr(e.t_end), "topics": json.dumps(e.topics),
            "open_threads": json.dumps(e.open_threads), "segments": json.dumps(e.segments),
        }  # fmt: skip

    # -- corrections -------------------------------------------------------------------------------

    def merge(self, keep: str, drop: str) -> None:
        """``drop`` was ``keep`` all along: move its views, facts and encounters over."""
        a, b = self.get(keep), self.get(drop)
        views = self.redis.hgetall(MemoryKeys.faces(drop))
        voices = self.redis.hgetall(MemoryKeys.voices(drop))
        facts = self.redis.hgetall(MemoryKeys.facts(drop))
        encounters = self.redis.zrange(MemoryKeys.encounters(drop), 0, -1, withscores=True)
        with self.redis.pipeline() as pipe:
            if views:
                pipe.hset(MemoryKeys.faces(keep), mapping=views)
            if voices:
                pipe.hset(MemoryKeys.voices(keep), mapping=voices)
                pipe.sadd(MemoryKeys.VOICED, keep)
            for key, value in facts.items():
                pipe.hsetnx(MemoryKeys.facts(keep), key, value)
            for eid, score in encounters:
                pipe.zadd(MemoryKeys.encounters(keep), {eid: score})
                pipe.hset(MemoryKeys.encounter(text(eid)), "person_id", keep)
            updates: dict[str, Any] = {
                f: getattr(b, f) for f in PROFILE_FIELDS if getattr(b, f) and not getattr(a, f)
            }
            updates |= {
                "first_seen": repr(min(a.first_seen, b.first_seen)),
                "last_seen": repr(max(a.last_seen, b.last_seen)),
                "encounters": a.encounters + b.encounters,
            }
            pipe.hset(MemoryKeys.person(keep), mapping=updates)
            pipe.zunionstore(MemoryKeys.lineage(keep), [MemoryKeys.lineage(keep), MemoryKeys.lineage(drop)])
            pipe.hdel(MemoryKeys.person(keep), "candidate")  # the wearer said who they are
            pipe.zrem(MemoryKeys.CANDIDATES, keep)
            self._delete_person(pipe, drop)
            self._mark_changed(pipe, keep)
            self._mark_changed(pipe, drop)
            pipe.execute()

    def split(self, pid: str, view: str) -> str:
        """Move one view out of ``pid`` into a new person; returns the new id."""
        embedding = self.redis.hget(MemoryKeys.faces(pid), view)
        if embedding is None:
            raise KeyError(f"{pid} has no view {view}")
        if self.redis.hlen(MemoryKeys.faces(pid)) == 1:
            raise ValueError(f"{view} is {pid}'s only view; rename or forget them instead")
        new = new_person_id()
        with self.redis.pipeline() as pipe:
            pipe.hdel(MemoryKeys.faces(pid), view)
            self._new_person(pipe, new, time.time(), b"")
            pipe.hset(MemoryKeys.faces(new), view, embedding)
            self._mark_changed(pipe, pid)
            self._mark_changed(pipe, new)
            pipe.execute()
        return new

    def delete(self, pid: str, encounter_ids: list[str]) -> None:
        """Remove the person's keys and encounters, and every claim on them in frames."""
        with self.redis.pipeline() as pipe:
            self._delete_person(pipe, pid)
            for eid in encounter_ids:
                pipe.delete(MemoryKeys.encounter(eid))
            pipe.xadd(CHANGES, {"person": FULL_RELOAD})
            pipe.execute()
        for key in self.redis.scan_iter(f"{KEY_PREFIX}:frame:*:persons"):
            self.redis.hdel(key, pid)

    def add_voices(self, pid: str, views: dict[str, bytes], cap: int) -> int:
        """Keep voice views of a person, the newest ``cap`` of them, in one step that does nothing
        once the person is gone (a forget meanwhile); returns how many they have."""
        if not views:
            return 0
        keys = [MemoryKeys.person(pid), MemoryKeys.voices(pid), MemoryKeys.VOICED, MemoryKeys.VOICES_VERSION]
        pairs = [x for name, data in sorted(views.items()) for x in (name, data)]
        return int(self.redis.eval(ADD_VOICES, len(keys), *keys, pid, cap, *pairs))

    def drop_changes_of(self, pid: str) -> None:
        """Remove the person's id from the changes stream."""
        ids = [i for i, f in self.redis.xrange(CHANGES) if text(f.get(b"person", b"")) == pid]
        if ids:
            self.redis.xdel(CHANGES, *ids)

    @staticmethod
    def _delete_person(pipe: redis.client.Pipeline, pid: str) -> None:
        pipe.delete(
            MemoryKeys.person(pid), MemoryKeys.faces(pid), MemoryKeys.facts(pid),
            MemoryKeys.encounters(pid), MemoryKeys.lineage(pid), MemoryKeys.sessions_of(pid),
            MemoryKeys.voices(pid),
        )  # fmt: skip
        pipe.srem(MemoryKeys.VOICED, pid)
        pipe.incr(MemoryKeys.VOICES_VERSION)
        pipe.srem(MemoryKeys.PERSONS, pid)
        pipe.zrem(MemoryKeys.CANDIDATES, pid)
