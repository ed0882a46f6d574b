"""Person admin: list, show, rename, merge, "not this person", and forget everywhere."""

import json
import logging
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np

from services.memory.person_store import CHANGES, FULL_RELOAD, PersonStore, _s
from services.trainer.dataset import Dataset
from services.trainer.registry import AdapterRegistry
from services.trainer.settings import DatasetSettings
from shared.streams import KEY_PREFIX, MemoryKeys, StreamNames

log = logging.getLogger(__name__)


class PersonAdmin:
    """Operations on persons that change what memory believes. Every one keeps replicas in step."""

    def __init__(
        self, store: PersonStore, streams: StreamNames, dataset: DatasetSettings | None = None
    ) -> None:
        self.store = store
        self.redis = store.redis
        self.streams = streams
        self.dataset = dataset or DatasetSettings()

    def list(self) -> list[dict[str, Any]]:
        """Every person, most recently seen first."""
        people = [self.store.profile(pid) for pid in self.store.person_ids()]
        return sorted(people, key=lambda p: -float(p["last_seen"] or 0))

    def show(self, pid: str) -> dict[str, Any]:
        person = self.store.profile(pid)
        person["summary"] = self.store.recall_summary(pid, person=person)
        person["view_ids"] = sorted(_s(v) for v in self.redis.hkeys(MemoryKeys.faces(pid)))
        return person

    def rename(self, pid: str, name: str) -> None:
        self.store.profile(pid)  # KeyError if unknown
        self.redis.hset(MemoryKeys.person(pid), "name", name.strip())

    def merge(self, keep: str, drop: str) -> None:
        """``drop`` was ``keep`` all along: move its views, facts and encounters over."""
        if keep == drop:
            raise ValueError("cannot merge a person into themselves")
        a, b = self.store.profile(keep), self.store.profile(drop)
        views = self.redis.hgetall(MemoryKeys.faces(drop))
        facts = self.redis.hgetall(MemoryKeys.facts(drop))
        encounters = self.redis.zrange(MemoryKeys.encounters(drop), 0, -1, withscores=True)
        with self.redis.pipeline() as pipe:
            if views:
                pipe.hset(MemoryKeys.faces(keep), mapping=views)
            for key, value in facts.items():
                pipe.hsetnx(MemoryKeys.facts(keep), key, value)
            for eid, score in encounters:
                pipe.zadd(MemoryKeys.encounters(keep), {eid: score})
                pipe.hset(MemoryKeys.encounter(_s(eid)), "person_id", keep)
            updates = {f: b[f] for f in ("name", "company", "role") if b[f] and not a[f]}
            updates |= {
                "first_seen": repr(min(float(a["first_seen"]), float(b["first_seen"]))),
                "last_seen": repr(max(float(a["last_seen"]), float(b["last_seen"]))),
                "encounters": int(a["encounters"]) + int(b["encounters"]),
            }
            pipe.hset(MemoryKeys.person(keep), mapping=updates)
            self._delete_person_keys(pipe, drop)
            self.store.mark_changed(pipe, keep)
            self.store.mark_changed(pipe, drop)
            pipe.execute()
        self.store.trim_views(keep)

    def split(self, pid: str, view_id: str) -> str:
        """ "Not this person": move one view out of ``pid`` into a new person; returns the new id."""
        embedding = self.redis.hget(MemoryKeys.faces(pid), view_id)
        if embedding is None:
            raise KeyError(f"{pid} has no view {view_id}")
        if self.redis.hlen(MemoryKeys.faces(pid)) == 1:
            raise ValueError(f"{view_id} is {pid}'s only view; rename or forget them instead")
        new = f"p-{uuid.uuid4().hex[:12]}"
        t = repr(time.time())
        with self.redis.pipeline() as pipe:
            pipe.hdel(MemoryKeys.faces(pid), view_id)
            pipe.sadd(MemoryKeys.PERSONS, new)
            pipe.hset(MemoryKeys.person(new), mapping={
                "id": new, "name": "", "company": "", "role": "", "first_seen": t, "last_seen": t,
                "encounters": 0, "thumb": b"",
            })  # fmt: skip
            pipe.hset(MemoryKeys.faces(new), view_id, embedding)
            self.store.mark_changed(pipe, pid)
            self.store.mark_changed(pipe, new)
            pipe.execute()
        return new

    def forget(self, pid: str) -> dict[str, int]:
        """Remove a person everywhere: views, facts, encounters, every stream entry that holds their
        id, their face or what they said, and their training rows; adapters trained on them are
        marked as holding forgotten data. Returns what was done, as counts."""
        person = self.store.profile(pid)
        views = self.store.views(pid)
        eids = person["encounter_ids"]
        segments = {
            s
            for eid in eids
            for s in json.loads(_s(self.redis.hget(MemoryKeys.encounter(eid), "segments") or b"[]"))
        }
        counts: Counter[str] = Counter(
            views=person["views"], facts=len(person["facts"]), encounters=len(eids)
        )
        frame_ids = self._drop_entries(self.streams.faces, counts, lambda f: self._is_face_of(f, views))
        self._drop_entries(self.streams.frames, counts, lambda f: _s(f.get(b"frame_id", b"")) in frame_ids)
        self._drop_entries(
            self.streams.transcripts, counts, lambda f: _s(f.get(b"segment_id", b"")) in segments
        )
        self._drop_entries(
            self.streams.audio_segments, counts, lambda f: _s(f.get(b"segment_id", b"")) in segments
        )
        for stream in (self.streams.recalls, self.streams.encounters):
            self._drop_entries(stream, counts, lambda f: _s(f.get(b"person_id", b"")) == pid)
        self._drop_entries(CHANGES, Counter(), lambda f: _s(f.get(b"person", b"")) == pid)
        self._drop_entries(
            self.streams.dlq, counts,
            lambda f: _s(f.get(b"f.person_id", b"")) == pid
            or _s(f.get(b"f.segment_id", b"")) in segments
            or _s(f.get(b"f.frame_id", b"")) in frame_ids
            or self._is_face_of({b"embedding": f.get(b"f.embedding", b"")}, views),
        )  # fmt: skip
        with self.redis.pipeline() as pipe:
            self._delete_person_keys(pipe, pid)
            for eid in eids:
                pipe.delete(MemoryKeys.encounter(eid))
            pipe.xadd(CHANGES, {"person": FULL_RELOAD})
            pipe.execute()
        counts["training rows"] = Dataset(self.dataset).forget(pid)
        counts["adapters with forgotten data"] = AdapterRegistry(self.redis).mark_forgotten(pid)
        for key in self.redis.scan_iter(f"{KEY_PREFIX}:frame:*:persons"):
            self.redis.hdel(key, pid)
        for pattern in (f"{KEY_PREFIX}:session:*:open:faces", f"{KEY_PREFIX}:encounter:*:closing:faces"):
            for key in self.redis.scan_iter(pattern):
                self.redis.zrem(key, pid)
        log.info("person=%s forgotten: %s", pid, dict(counts))
        return dict(counts)

    def _is_face_of(self, fields: dict[bytes, bytes], views: np.ndarray | None) -> bool:
        data = fields.get(b"embedding", b"")
        if views is None or len(data) != views.shape[1] * 4:
            return False
        vector = np.frombuffer(data, dtype="<f4")
        return bool(np.isfinite(vector).all() and (views @ vector).max() >= self.store.settings.threshold)

    def _drop_entries(self, stream: str, counts: Counter[str], doomed: Any) -> set[str]:
        """XDEL the entries of ``stream`` for which ``doomed(fields)`` holds; returns their frame ids."""
        ids, frames = [], set()
        for entry_id, fields in self.redis.xrange(stream):
            if doomed(fields):
                ids.append(entry_id)
                frames.add(_s(fields.get(b"frame_id", b"")))
        if ids:
            self.redis.xdel(stream, *ids)
            counts[f"stream:{stream}"] += len(ids)
        return frames

    @staticmethod
    def _delete_person_keys(pipe: Any, pid: str) -> None:
        pipe.delete(
            MemoryKeys.person(pid), MemoryKeys.faces(pid), MemoryKeys.facts(pid),
            MemoryKeys.encounters(pid), MemoryKeys.recall_cooldown(pid),
        )  # fmt: skip
        pipe.srem(MemoryKeys.PERSONS, pid)
