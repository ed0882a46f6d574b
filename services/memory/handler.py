"""Faces and transcripts in; recall cards and finished conversations out."""

import logging
import time
from collections.abc import Sequence

import redis
from prometheus_client import Counter

from services.memory.conversations import Closing, Conversations
from services.memory.extract import Extractor
from services.memory.person_store import PersonStore
from services.memory.settings import MemorySettings
from shared.schemas import (
    BadMessageError,
    EncounterMessage,
    FaceMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
)
from shared.streams import Groups

log = logging.getLogger(__name__)
CAUGHT_UP_S = 5.0

MATCHES = Counter("convo_memory_faces_total", "Faces by outcome", ["outcome"])
ENCOUNTERS = Counter("convo_memory_encounters_total", "Conversations closed, by outcome", ["outcome"])


class MemoryHandler:
    """Identifies faces, assembles each session's conversation, and closes it when it goes quiet.

    It decides; the person store and the conversations (``conversations.py``) keep the state in
    Redis, so any replica can add to a conversation or close it.
    """

    def __init__(
        self, client: redis.Redis, settings: MemorySettings, extractor: Extractor | None = None
    ) -> None:
        self.settings = settings
        self.store = PersonStore(client, settings.match, extractor, wearer=settings.wearer_name)
        self.conversations = Conversations(client)
        self.every_s = settings.encounter.tick_s

    def _known_session(self, session: str) -> None:
        if not self.conversations.known_session(session):
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
        self.conversations.seen(msg.session, result.person_id, area, msg.t, time.time())
        if not self.store.repo.card_due(result.person_id, msg.face_id, self.settings.match.recall_cooldown_s):
            return []
        card = self.store.recall(result.person_id, now=msg.t)
        return [
            RecallMessage(
                recall_id=msg.face_id, person_id=result.person_id, similarity=round(result.score, 4),
                t=msg.t, thumb=msg.thumb, **card.model_dump(),
            )
        ]  # fmt: skip

    # -- transcripts and conversations ---------------------------------------------------

    def on_transcript(self, msg: TranscriptMessage) -> list[EncounterMessage]:
        if not msg.text.strip():
            raise BadMessageError(f"segment {msg.segment_id}: empty transcript")
        self._known_session(msg.session)
        segment = {"id": msg.segment_id, "t_start": msg.t_start, "t_end": msg.t_end, "text": msg.text}
        self.conversations.heard(msg.session, segment, self.settings.encounter.gap_s, time.time())
        return []

    def tick(self) -> list[EncounterMessage]:
        """End every conversation quiet for longer than the gap, and write every ended one.

        Quiet means both: no speech for ``gap_s`` (speech time), and nothing arrived for it
        for ``gap_s`` (this machine's time), since transcripts trail the speech by the
        transcriber's latency. An ended conversation's state stays until its encounter is
        written (:meth:`committed`): a replica killed in between leaves it for the next tick.
        """
        now = time.time()
        if self._caught_up(now):  # decide when memory has caught up
            for session in self.conversations.open_sessions():
                self.conversations.seal_if_quiet(session, now, self.settings.encounter.gap_s)
        out = []
        for eid in self.conversations.closing_ids():
            closing = self.conversations.closing(eid)
            if closing is not None:
                out += self._encounter(closing)
        return out

    def committed(self, outputs: Sequence[StreamMessage]) -> None:
        """The encounters are in the stream: their ended conversations' state can go."""
        for msg in outputs:
            if isinstance(msg, EncounterMessage):
                self.conversations.discard(msg.encounter_id)

    def _caught_up(self, now: float) -> bool:
        """Whether memory has handled every face and transcript written before the last few seconds.

        "Quiet" is measured by when memory handled a session's entries; while memory lags (a
        stalled or killed replica), entries of a quiet-looking session may still be waiting.
        """
        streams = (self.settings.streams.transcripts, self.settings.streams.faces)
        for stream in streams:
            oldest = self.conversations.oldest_unfinished(stream, Groups.MEMORY)
            if oldest is not None and now - oldest > CAUGHT_UP_S:
                return False
        return True

    def _encounter(self, c: Closing) -> list[EncounterMessage]:
        """The ended conversation as an encounter, recorded in the person's profile (once)."""
        if not c.segments or not c.people:
            outcome = "no speech" if not c.segments else "no face"
            ENCOUNTERS.labels(outcome).inc()
            log.info("encounter=%s session=%s closed without a record: %s", c.id, c.session, outcome)
            self.conversations.discard(c.id)
            return []
        pid = c.people[0]
        transcript = " ".join(s["text"] for s in c.segments)
        extraction = self.store.extractor.extract(transcript, self.store.wearer)
        t_end = max(s["t_end"] for s in c.segments)
        with self.conversations.lock(c.session):  # two replicas ticking at once record it once
            self.store.record_encounter(
                pid, c.id, extraction, c.t_start, t_end, c.session, transcript, [s["id"] for s in c.segments]
            )
        self.store.repo.news(pid)
        ENCOUNTERS.labels("recorded").inc()
        log.info(
            "encounter=%s session=%s person=%s segments=%d outcome=recorded",
            c.id,
            c.session,
            pid,
            len(c.segments),
        )
        facts = [{"text": f, "kind": "fact", "source": c.id} for f in extraction.facts]
        return [
            EncounterMessage(
                encounter_id=c.id, session=c.session, person_id=pid, t_start=c.t_start, t_end=t_end,
                transcript=transcript, summary=extraction.summary, facts=facts,
                name=extraction.name or "", company=extraction.company or "", role=extraction.role or "",
                place=extraction.place or "", topics=extraction.topics[:20],
                open_threads=extraction.open_threads[:20], backend=extraction.backend,
            )
        ]  # fmt: skip
