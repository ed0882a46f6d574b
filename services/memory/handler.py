"""Faces and transcripts in; recall cards and finished conversations out."""

import json
import logging
import time
import uuid
from collections.abc import Sequence

import redis
from prometheus_client import Counter

from services.memory.extract import Extractor
from services.memory.person_store import PersonStore, _s
from services.memory.settings import MemorySettings
from shared.retention import oldest_unfinished
from shared.schemas import (
    BadMessageError,
    EncounterMessage,
    FaceMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
)
from shared.streams import Groups, MemoryKeys

log = logging.getLogger(__name__)
CAUGHT_UP_S = 5.0

MATCHES = Counter("convo_memory_faces_total", "Faces by outcome", ["outcome"])
ENCOUNTERS = Counter("convo_memory_encounters_total", "Conversations closed, by outcome", ["outcome"])


class MemoryHandler:
    """Identifies faces, assembles each session's conversation, and closes it when it goes quiet.

    A session's conversation in progress lives in Redis (``MemoryKeys.open_encounter``),
    so any replica can add to it or close it; a per-session lock keeps them in order.
    """

    def __init__(
        self, client: redis.Redis, settings: MemorySettings, extractor: Extractor | None = None
    ) -> None:
        self.redis = client
        self.settings = settings
        self.store = PersonStore(client, settings.match, extractor, wearer=settings.wearer_name)
        self.every_s = settings.encounter.tick_s

    def _known_session(self, session: str) -> None:
        if not self.redis.sismember(MemoryKeys.SESSIONS, session):
            raise BadMessageError(f"unknown session {session!r}: no capture announced it")

    # -- faces ---------------------------------------------------------------------------

    def on_face(self, msg: FaceMessage) -> list[RecallMessage]:
        vector = msg.vector()
        self._known_session(msg.session)
        result = self.store.identify(
            vector, frame_id=msg.frame_id, thumb=msg.thumb, t=msg.t, face_id=msg.face_id
        )
        MATCHES.labels(result.outcome).inc()
        log.info(
            "face=%s person=%s outcome=%s score=%.2f",
            msg.face_id,
            result.person_id,
            result.outcome,
            result.score,
        )
        if result.person_id is None:
            return []
        area = max(msg.bbox[2] - msg.bbox[0], 0) * max(msg.bbox[3] - msg.bbox[1], 0)
        with self._session_lock(msg.session):
            key = self._open(msg.session, msg.t)
            self.redis.zincrby(key + ":faces", area, result.person_id)
            self.redis.hset(key, "t_seen", repr(time.time()))
        if not self._card_due(result.person_id, msg.face_id):
            return []
        person = self.store.profile(result.person_id)
        card = self.store.recall(result.person_id, now=msg.t, person=person)
        return [
            RecallMessage(
                recall_id=msg.face_id, person_id=result.person_id, similarity=round(result.score, 4),
                t=msg.t, thumb=msg.thumb, **card,
            )
        ]  # fmt: skip

    def _card_due(self, pid: str, face_id: str) -> bool:
        """At most one card per person per cooldown; a redelivered face keeps its card."""
        key = MemoryKeys.recall_cooldown(pid)
        ttl = max(int(self.settings.match.recall_cooldown_s), 1)
        return (
            bool(self.redis.set(key, face_id, nx=True, ex=ttl)) or _s(self.redis.get(key) or b"") == face_id
        )

    # -- transcripts and conversations ---------------------------------------------------

    def on_transcript(self, msg: TranscriptMessage) -> list[EncounterMessage]:
        if not msg.text.strip():
            raise BadMessageError(f"segment {msg.segment_id}: empty transcript")
        self._known_session(msg.session)
        with self._session_lock(msg.session):
            current = self.redis.hgetall(MemoryKeys.open_encounter(msg.session))
            if current and msg.t_start - float(current[b"t_last"]) > self.settings.encounter.gap_s:
                self._seal(msg.session)  # the next tick writes it
            key = self._open(msg.session, msg.t_start)
            segment = json.dumps(
                {"id": msg.segment_id, "t_start": msg.t_start, "t_end": msg.t_end, "text": msg.text}
            )
            self.redis.hset(key + ":segments", msg.segment_id, segment)
            last = float(self.redis.hget(key, "t_last") or 0)
            self.redis.hset(key, mapping={"t_last": repr(max(last, msg.t_end)), "t_seen": repr(time.time())})
        return []

    def tick(self) -> list[EncounterMessage]:
        """End every conversation quiet for longer than the gap, and write every ended one.

        Quiet means both: no speech for ``gap_s`` (speech time), and nothing arrived for it
        for ``gap_s`` (this machine's time), since transcripts trail the speech by the
        transcriber's latency. An ended conversation's state stays until its encounter is
        written (:meth:`committed`): a replica killed in between leaves it for the next tick.
        """
        now = time.time()
        open_sessions = [_s(s) for s in self.redis.smembers(MemoryKeys.OPEN_SESSIONS)]
        if open_sessions and not self._caught_up(now):
            open_sessions = []  # decide when memory has caught up
        for session in open_sessions:
            times = self.redis.hmget(MemoryKeys.open_encounter(session), "t_last", "t_seen")
            latest = max((float(t) for t in times if t is not None), default=0.0)
            if now - latest > self.settings.encounter.gap_s:
                with self._session_lock(session):
                    self._seal(session)
        out = []
        for eid in sorted(_s(e) for e in self.redis.smembers(MemoryKeys.CLOSING)):
            out += self._encounter(eid)
        return out

    def committed(self, outputs: Sequence[StreamMessage]) -> None:
        """The encounters are in the stream: their ended conversations' state can go."""
        for msg in outputs:
            if isinstance(msg, EncounterMessage):
                self._discard(msg.encounter_id)

    def _session_lock(self, session: str):  # type: ignore[no-untyped-def]
        # Held for a few Redis calls; a replica killed holding it blocks the session this long at most.
        return self.redis.lock(MemoryKeys.session_lock(session), timeout=10, blocking_timeout=30)

    def _caught_up(self, now: float) -> bool:
        """Whether memory has handled every face and transcript written before the last few seconds.

        "Quiet" is measured by when memory handled a session's entries; while memory lags (a
        stalled or killed replica), entries of a quiet-looking session may still be waiting.
        """
        streams = (self.settings.streams.transcripts, self.settings.streams.faces)
        for stream in streams:
            oldest = oldest_unfinished(self.redis, stream, Groups.MEMORY)
            if oldest is not None and now - oldest > CAUGHT_UP_S:
                return False
        return True

    def _open(self, session: str, t: float) -> str:
        """The session's open conversation, started at ``t`` if there is none."""
        key = MemoryKeys.open_encounter(session)
        eid = f"e-{session}-{uuid.uuid4().hex[:8]}"
        if self.redis.hsetnx(key, "id", eid):
            self.redis.hset(key, mapping={"t_start": repr(t), "t_last": repr(t)})
            self.redis.sadd(MemoryKeys.OPEN_SESSIONS, session)
        return key

    def _seal(self, session: str) -> None:
        """End the session's conversation: its state moves under the encounter's id, for tick to write."""
        key = MemoryKeys.open_encounter(session)
        eid = self.redis.hget(key, "id")
        if eid is None:
            self.redis.srem(MemoryKeys.OPEN_SESSIONS, session)
            return
        closing = MemoryKeys.closing(_s(eid))
        with self.redis.pipeline() as pipe:
            pipe.hset(key, "session", session)
            for suffix in ("", ":segments", ":faces"):
                pipe.rename(key + suffix, closing + suffix)
            pipe.sadd(MemoryKeys.CLOSING, eid)
            pipe.srem(MemoryKeys.OPEN_SESSIONS, session)
            pipe.execute(raise_on_error=False)  # a conversation without faces has no :faces to move

    def _discard(self, eid: str) -> None:
        closing = MemoryKeys.closing(eid)
        with self.redis.pipeline() as pipe:
            pipe.delete(closing, closing + ":segments", closing + ":faces")
            pipe.srem(MemoryKeys.CLOSING, eid)
            pipe.execute()

    def _encounter(self, eid: str) -> list[EncounterMessage]:
        """The ended conversation ``eid`` as an encounter, recorded in the person's profile (once)."""
        key = MemoryKeys.closing(eid)
        current = {_s(k): _s(v) for k, v in self.redis.hgetall(key).items()}
        if not current:
            self.redis.srem(MemoryKeys.CLOSING, eid)
            return []
        session = current["session"]
        segments = sorted(
            (json.loads(v) for v in self.redis.hvals(key + ":segments")), key=lambda s: s["t_start"]
        )
        seen = self.redis.zrevrange(key + ":faces", 0, 0)
        if not segments or not seen:
            outcome = "no speech" if not segments else "no face"
            ENCOUNTERS.labels(outcome).inc()
            log.info("encounter=%s session=%s closed without a record: %s", eid, session, outcome)
            self._discard(eid)
            return []
        pid = _s(seen[0])
        transcript = " ".join(s["text"] for s in segments)
        extraction = self.store.extractor.extract(transcript, self.store.wearer)
        t_start, t_end = float(current["t_start"]), max(s["t_end"] for s in segments)
        segment_ids = [s["id"] for s in segments]
        with self._session_lock(session):  # two replicas ticking at once record it once
            self.store.record_encounter(
                pid, eid, extraction, t_start, t_end, session, transcript, segment_ids
            )
        self.redis.delete(MemoryKeys.recall_cooldown(pid))  # there is news: the next sighting gets a card
        ENCOUNTERS.labels("recorded").inc()
        log.info(
            "encounter=%s session=%s person=%s segments=%d outcome=recorded",
            eid,
            session,
            pid,
            len(segments),
        )
        facts = [{"text": f, "kind": "fact", "source": eid} for f in extraction.facts]
        return [
            EncounterMessage(
                encounter_id=eid, session=session, person_id=pid, t_start=t_start, t_end=t_end,
                transcript=transcript, summary=extraction.summary, facts=facts,
                name=extraction.name or "", company=extraction.company or "", role=extraction.role or "",
                place=extraction.place or "", topics=extraction.topics[:20],
                open_threads=extraction.open_threads[:20], backend=extraction.backend,
            )
        ]  # fmt: skip
