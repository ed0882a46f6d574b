"""The people the wearer meets, in Redis: faces, facts with provenance, encounters, and recall.

Redis is the source of truth. Each replica keeps an index of every person's views
(:class:`FaceIndex`: numpy for exact scores, a quantised faiss scan to find them), brought
up to date from the ``convo:persons:changes`` stream before each match, so all replicas
match against the same people. New persons are created under a Redis lock with a
re-match inside it, so two replicas seeing one new face create one person.
"""

import json
import logging
import os
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import redis

from services.memory.extract import Extraction, Extractor, RulesExtractor
from services.memory.settings import MatchSettings
from shared.schemas import EMBEDDING_DIM, BadMessageError, embedding_from_bytes, embedding_to_bytes
from shared.streams import MemoryKeys, stream_id

log = logging.getLogger(__name__)

CHANGES = MemoryKeys.CHANGES
CHANGES_CAP = 100_000
FULL_RELOAD = "*"
SCAN_RANGE = 0.25
"""Quantiser range per component; buffalo_s's normed embeddings stay within ±0.17 (measured)."""
FIRST_SCAN = 64
"""Views the first scan returns; enough for an exact answer almost always (bench/memory.py)."""
SCAN_SHARDS = min(4, os.cpu_count() or 1)
"""The scan is split over this many threads."""


@dataclass(frozen=True)
class Match:
    """The answer for one face: a person, or why not."""

    person_id: str | None
    score: float
    runner_up: float
    outcome: str  # "match", "new", "ambiguous"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stack(views: dict[bytes, bytes]) -> np.ndarray | None:
    """A person's views (view id -> float32 bytes) as a matrix, oldest first."""
    if not views:
        return None
    return np.stack([np.frombuffer(v, dtype="<f4") for _, v in sorted(views.items())])


def ago(seconds: float) -> str:
    """'just now', '5 minutes ago', '3 days ago'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


class FaceIndex:
    """Every person's views, for the best and runner-up person by max-per-person cosine.

    Two copies: float32 per person, for exact scores, and all views 8-bit quantised in
    faiss, a quarter of the bytes to scan (memory bandwidth is what a scan costs), split
    into shards that are scanned in parallel.
    A quantised score is within ``err`` of the exact one, so the answer stays exact: the
    persons the scan puts near the top are scored exactly, and when a view the scan left
    out could still beat the runner-up, the scan is widened (rarely; all views at most).
    """

    def __init__(self, shards: int = SCAN_SHARDS) -> None:
        self.views: dict[str, np.ndarray] = {}
        self._codecs = [self._quantiser() for _ in range(shards)]
        self._shards = [faiss.IndexIDMap2(codec) for codec in self._codecs]
        self._scan = faiss.IndexShards(EMBEDDING_DIM, True, False)  # one thread per shard
        for shard in self._shards:
            self._scan.add_shard(shard)
        self._placed: dict[str, tuple[int, np.ndarray]] = {}  # person -> shard, view ids
        self._owner: dict[int, str] = {}
        self._next_id = 0
        self.err = 0.0
        """The most a quantised score of any view added so far is off by (a unit query)."""
        self.widened = 0
        """Scans that had to be widened to stay exact."""

    @staticmethod
    def _quantiser() -> faiss.IndexScalarQuantizer:
        codec = faiss.IndexScalarQuantizer(
            EMBEDDING_DIM, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT
        )
        codec.train(np.array([[-SCAN_RANGE] * EMBEDDING_DIM, [SCAN_RANGE] * EMBEDDING_DIM], np.float32))
        return codec

    def update(self, changed: dict[str, np.ndarray | None]) -> None:
        """Replace these persons' views (``None`` or empty: the person has none)."""
        gone = [self._placed.pop(pid) for pid in changed if pid in self._placed]
        for n, shard in enumerate(self._shards):
            ids = [ids for where, ids in gone if where == n]
            if ids:
                shard.remove_ids(np.concatenate(ids))  # one pass over the shard for the whole batch
        for _, ids in gone:
            for i in ids.tolist():
                del self._owner[i]
        sizes = [shard.ntotal for shard in self._shards]
        added: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self._shards]
        for pid, views in changed.items():
            if views is None or len(views) == 0:
                self.views.pop(pid, None)
                continue
            self.views[pid] = np.ascontiguousarray(views, np.float32)
            n = sizes.index(min(sizes))
            sizes[n] += len(views)
            ids = np.arange(self._next_id, self._next_id + len(views), dtype=np.int64)
            self._next_id += len(views)
            self._placed[pid] = (n, ids)
            self._owner.update(dict.fromkeys(ids.tolist(), pid))
            added[n].append((ids, self.views[pid]))
        for shard, codec, batch in zip(self._shards, self._codecs, added, strict=True):
            if batch:
                vectors = np.concatenate([v for _, v in batch])
                shard.add_with_ids(vectors, np.concatenate([i for i, _ in batch]))
                lost = np.linalg.norm(vectors - codec.sa_decode(codec.sa_encode(vectors)), axis=1)
                # a unit query is off by at most |view - decoded|; the rest covers float rounding
                self.err = max(self.err, float(lost.max()) + 1e-4)
        self._scan.syncWithSubIndexes()

    def top_two(self, vector: np.ndarray, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The best two persons not in ``exclude`` with their exact scores, best first."""
        vector = np.ascontiguousarray(vector, np.float32)
        total = self._scan.ntotal
        k = min(FIRST_SCAN, total)
        while k:
            approx, ids = self._scan.search(vector[None], k)
            lead: dict[str, float] = {}  # person -> their best quantised score, best person first
            for a, i in zip(approx[0].tolist(), ids[0].tolist(), strict=True):
                pid = self._owner[i]
                if pid not in exclude:
                    lead.setdefault(pid, a)
            leads = list(lead.values())
            # the two leading persons score at least this exactly; a person the scan puts
            # further below it than err cannot be in the top two
            floor = leads[1] - self.err if len(leads) > 1 else -np.inf
            near = [p for p, a in lead.items() if a + self.err >= floor]
            exact = {p: float((self.views[p] @ vector).max()) for p in near}
            top = sorted(exact.items(), key=lambda kv: -kv[1])[:2]
            unseen = approx[0][-1] + self.err  # no view the scan left out scores more than this
            if k == total or (len(top) == 2 and top[1][1] >= unseen):
                return top
            k = min(k * 8, total)
            self.widened += 1
        return []


class PersonStore:
    """Person memory. ``process_encounter`` is the one-call entry point; the memory service
    uses ``identify`` for faces and ``record_encounter`` for finished conversations."""

    def __init__(
        self, client: redis.Redis, settings: MatchSettings, extractor: Extractor | None = None,
        wearer: str | None = None,
    ) -> None:  # fmt: skip
        self.redis = client
        self.settings = settings
        self.extractor = extractor or RulesExtractor()
        self.wearer = wearer
        self.index = FaceIndex()
        self._seen_change = b"0-0"
        self._loaded = False

    # -- the index -----------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the index up to date with Redis: only the persons changed since the last call."""
        if not self._loaded:
            self._load_all()
            return
        changes = self.redis.xrange(CHANGES, min=b"(" + self._seen_change)
        if not changes:
            return
        oldest = self.redis.xrange(CHANGES, count=1)[0][0]
        if self._seen_change != b"0-0" and stream_id(oldest) > stream_id(self._seen_change):
            self._load_all()  # the changes stream was trimmed past what this replica saw
            return
        self._seen_change = changes[-1][0]
        changed = {_s(fields[b"person"]) for _, fields in changes}
        if FULL_RELOAD in changed:  # a person was forgotten: their id is not written down anywhere
            self._load_all()
            return
        self.index.update({pid: self.views(pid) for pid in changed})

    def _load_all(self) -> None:
        last = self.redis.xrevrange(CHANGES, count=1)
        self._seen_change = last[0][0] if last else b"0-0"
        self.index = FaceIndex()
        pids = self.person_ids()
        for start in range(0, len(pids), 1000):  # pipelined: one round trip per thousand persons
            chunk = pids[start : start + 1000]
            with self.redis.pipeline(transaction=False) as pipe:
                for pid in chunk:
                    pipe.hgetall(MemoryKeys.faces(pid))
                self.index.update({
                    pid: _stack(views) for pid, views in zip(chunk, pipe.execute(), strict=True)
                })  # fmt: skip
        self._loaded = True

    def views(self, pid: str) -> np.ndarray | None:
        """A person's stored views, oldest first; ``None`` for none."""
        return _stack(self.redis.hgetall(MemoryKeys.faces(pid)))

    def mark_changed(self, pipe: redis.client.Pipeline, pid: str) -> None:
        """Tell every replica (in ``pipe``) that ``pid``'s views changed."""
        pipe.xadd(CHANGES, {"person": pid}, maxlen=CHANGES_CAP, approximate=True)

    # -- matching ------------------------------------------------------------------------

    def match(self, vector: np.ndarray, exclude: Collection[str] = ()) -> Match:
        """Best person for a normed embedding: threshold, then margin over the runner-up."""
        self.refresh()
        top = self.index.top_two(vector, exclude)
        if not top:
            return Match(None, 0.0, 0.0, "new")
        best = top[0][1]
        runner_up = top[1][1] if len(top) > 1 else 0.0
        if best < self.settings.threshold:
            return Match(None, best, runner_up, "new")
        if best - runner_up < self.settings.margin:
            return Match(None, best, runner_up, "ambiguous")
        return Match(top[0][0], best, runner_up, "match")

    def identify(
        self,
        embedding: bytes | np.ndarray,
        frame_id: str | None = None,
        thumb: bytes = b"",
        t: float | None = None,
        face_id: str | None = None,
    ) -> Match:
        """Match a face, or make it a new person. Two faces of one frame never get the same person;
        the same face (``face_id``) handled again, after a crash say, gets the person it got before."""
        vector = embedding if isinstance(embedding, np.ndarray) else embedding_from_bytes(embedding)
        if isinstance(embedding, np.ndarray):
            embedding_from_bytes(embedding_to_bytes(vector))  # the same checks: size, finite, normed
        t = t if t is not None else time.time()
        taken = MemoryKeys.frame_persons(frame_id) if frame_id else None
        face = face_id or "?"
        for _ in range(8):
            claims = {_s(p): _s(f) for p, f in self.redis.hgetall(taken).items()} if taken else {}
            exclude = {p for p, f in claims.items() if f != face or face == "?"}
            result = self.match(vector, exclude)
            if result.outcome == "new":
                result = self._create(vector, thumb, t, exclude)
            if result.person_id is None:
                return result
            if taken is None or self._claim_in_frame(taken, result.person_id, face):
                if result.outcome == "match":
                    self._touch(result.person_id, vector, thumb, t)
                return result
        raise RuntimeError(f"could not give frame {frame_id} a person after 8 tries")

    def _claim_in_frame(self, key: str, pid: str, face: str) -> bool:
        """Give ``pid`` to this face of the frame, unless another face of it has them."""
        with self.redis.pipeline() as pipe:
            pipe.hsetnx(key, pid, face)
            pipe.hget(key, pid)
            pipe.expire(key, 3600)
            added, owner, _ = pipe.execute()
        return bool(added) or (face != "?" and _s(owner) == face)

    def _create(self, vector: np.ndarray, thumb: bytes, t: float, exclude: set[str]) -> Match:
        with self.redis.lock(MemoryKeys.NEW_PERSON_LOCK, timeout=10, blocking_timeout=10):
            again = self.match(vector, exclude)  # another replica may have created them meanwhile
            if again.outcome != "new":
                return again
            pid = f"p-{uuid.uuid4().hex[:12]}"
            with self.redis.pipeline() as pipe:
                pipe.sadd(MemoryKeys.PERSONS, pid)
                pipe.hset(MemoryKeys.person(pid), mapping={
                    "id": pid, "name": "", "company": "", "role": "", "first_seen": repr(t),
                    "last_seen": repr(t), "encounters": 0, "thumb": thumb,
                })  # fmt: skip
                pipe.hset(MemoryKeys.faces(pid), self._view_id(t), embedding_to_bytes(vector))
                self.mark_changed(pipe, pid)
                pipe.execute()
            self.refresh()
            log.info("person=%s outcome=new", pid)
            return Match(pid, 1.0, again.score, "new")

    @staticmethod
    def _view_id(t: float) -> str:
        return f"v{int(t * 1000):014d}-{uuid.uuid4().hex[:4]}"

    def _touch(self, pid: str, vector: np.ndarray, thumb: bytes, t: float) -> None:
        """A confident match: keep the view if it is a new look, and the newest thumbnail."""
        views = self.index.views.get(pid)
        new_look = views is None or float((views @ vector).max()) < self.settings.new_view_below
        with self.redis.pipeline() as pipe:
            if new_look:
                pipe.hset(MemoryKeys.faces(pid), self._view_id(t), embedding_to_bytes(vector))
                self.mark_changed(pipe, pid)
            if thumb:
                pipe.hset(MemoryKeys.person(pid), "thumb", thumb)
            pipe.execute()
        if new_look:
            self.trim_views(pid)

    def trim_views(self, pid: str) -> None:
        """Keep the newest ``max_views`` views of a person."""
        keys = sorted(self.redis.hkeys(MemoryKeys.faces(pid)))
        extra = len(keys) - self.settings.max_views
        if extra > 0:
            with self.redis.pipeline() as pipe:
                pipe.hdel(MemoryKeys.faces(pid), *keys[:extra])
                self.mark_changed(pipe, pid)
                pipe.execute()

    # -- profiles ------------------------------------------------------------------------

    def person_ids(self) -> list[str]:
        return sorted(_s(p) for p in self.redis.smembers(MemoryKeys.PERSONS))

    def profile(self, pid: str) -> dict[str, Any]:
        """A person with their facts and encounters; ``KeyError`` if there is no such person."""
        raw = self.redis.hgetall(MemoryKeys.person(pid))
        if not raw:
            raise KeyError(pid)
        person: dict[str, Any] = {_s(k): v if k == b"thumb" else _s(v) for k, v in raw.items()}
        person["facts"] = [json.loads(v) for v in self.redis.hvals(MemoryKeys.facts(pid))]
        person["encounter_ids"] = [_s(e) for e in self.redis.zrange(MemoryKeys.encounters(pid), 0, -1)]
        person["views"] = self.redis.hlen(MemoryKeys.faces(pid))
        return person

    def record_encounter(
        self,
        pid: str,
        eid: str,
        extraction: Extraction,
        t_start: float,
        t_end: float,
        session: str,
        transcript: str,
        segment_ids: list[str] | None = None,
    ) -> None:
        """Store a finished conversation and fold what it said into the person's profile.

        ``segment_ids`` name the speech it came from, so that ``forget`` can find it.
        """
        person = self.redis.hgetall(MemoryKeys.person(pid))
        if not person:
            raise BadMessageError(f"encounter {eid}: no person {pid}")
        if self.redis.zscore(MemoryKeys.encounters(pid), eid) is not None:
            return  # recorded already (a redelivery)
        updates: dict[str, Any] = {"last_seen": repr(max(t_end, float(person.get(b"last_seen", 0))))}
        for field in ("name", "company", "role"):
            value = getattr(extraction, field)
            if value and not _s(person.get(field.encode(), b"")):
                updates[field] = value
        facts = {f"fact:{f.lower()}": f for f in extraction.facts} | {
            f"topic:{x.lower()}": x for x in extraction.topics
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(MemoryKeys.person(pid), mapping=updates)
            pipe.hincrby(MemoryKeys.person(pid), "encounters", 1)
            for key, text in facts.items():
                kind = key.split(":", 1)[0]
                pipe.hsetnx(
                    MemoryKeys.facts(pid),
                    key,
                    json.dumps({"text": text, "kind": kind, "source": eid, "t": t_end}),
                )
            pipe.zadd(MemoryKeys.encounters(pid), {eid: t_end})
            record = {
                "id": eid, "person_id": pid, "session": session, "t_start": repr(t_start),
                "t_end": repr(t_end), "transcript": transcript, "summary": extraction.summary,
                "place": extraction.place or "", "topics": json.dumps(extraction.topics),
                "open_threads": json.dumps(extraction.open_threads), "backend": extraction.backend,
                "segments": json.dumps(segment_ids or []),
            }  # fmt: skip
            pipe.hset(MemoryKeys.encounter(eid), mapping=record)
            pipe.execute()

    def recall(
        self, pid: str, now: float | None = None, person: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What the card shows: who, from where, when and where last met, topics, open threads,
        and ``summary``, all of it as one line:
        'Sarah Chen from Stripe — last met 3 days ago at the climbing gym; talked about rate limits'.

        ``person`` is the profile when the caller has it already.
        """
        now = now if now is not None else time.time()
        person = person or self.profile(pid)
        card: dict[str, Any] = {
            "name": person["name"] or "Unknown person", "company": person["company"], "role": person["role"],
            "last_met": 0.0, "place": "", "topics": [], "open_threads": [], "backend": "",
        }  # fmt: skip
        who = card["name"] + (f" from {card['company']}" if card["company"] else "")
        last = self.redis.zrevrange(MemoryKeys.encounters(pid), 0, 0)
        if not last:
            return card | {"summary": f"{who} — first time seen"}
        enc = {_s(k): _s(v) for k, v in self.redis.hgetall(MemoryKeys.encounter(_s(last[0]))).items()}
        card |= {
            "last_met": float(enc["t_end"]), "place": enc.get("place", ""), "backend": enc.get("backend", ""),
            "topics": json.loads(enc.get("topics") or "[]"),
            "open_threads": json.loads(enc.get("open_threads") or "[]"),
        }  # fmt: skip
        text = f"{who} — last met {ago(now - card['last_met'])}"
        if card["place"]:
            text += f" at the {card['place']}"
        if card["topics"]:
            text += f"; talked about {card['topics'][0]}"
        if card["open_threads"]:
            text += f"; open: {card['open_threads'][0]}"
        return card | {"summary": text}

    def recall_summary(self, pid: str, now: float | None = None, person: dict[str, Any] | None = None) -> str:
        """The card as one line of text (see :meth:`recall`)."""
        return self.recall(pid, now, person)["summary"]

    def process_encounter(
        self,
        face_embedding: bytes | np.ndarray,
        transcript: str,
        t: float | None = None,
        session: str = "direct",
    ) -> str:
        """See a face while hearing ``transcript``: returns what to show the wearer, then remembers it.

        A known face gets the summary of what was known before this conversation; a new
        face gets what this first conversation said.
        """
        if not transcript.strip():
            raise BadMessageError("empty transcript")
        t = t if t is not None else time.time()
        result = self.identify(face_embedding, t=t)
        if result.person_id is None:
            return f"Not sure who this is (best {result.score:.2f}, runner-up {result.runner_up:.2f})"
        known = result.outcome == "match" and self.redis.zcard(MemoryKeys.encounters(result.person_id)) > 0
        summary = self.recall_summary(result.person_id, now=t) if known else ""
        extraction = self.extractor.extract(transcript, self.wearer)
        eid = f"e-{uuid.uuid4().hex[:12]}"
        self.record_encounter(result.person_id, eid, extraction, t, t, session, transcript)
        return summary or f"First meeting: {extraction.summary}"
