"""Ended conversations in; encounters out: who it was with, what was said, what was learned.

Memory cuts a session's speech into conversations and hands each ended one over on the
``conversations`` stream, its state left in Redis under the encounter id. Writing it down
(extraction, which takes seconds with Claude and more with the ``local`` model) happens here,
in a stage of its own, so that memory's loop, which turns faces into cards, never waits for it.
"""

import logging
from collections.abc import Sequence

import numpy as np
import redis
from prometheus_client import Counter

from services.memory.conversations import Closing, Conversations
from services.memory.extract import Extraction, Extractor, intentions
from services.memory.grounding import grounded
from services.memory.person_store import PersonStore
from services.memory.recall import encounter_summary
from services.memory.settings import MemorySettings
from services.memory.view import named, pick
from services.memory.voices import VoiceIndex, one_voice
from services.memory.wearer import ME, THEM
from shared.consumer import done_of
from shared.schemas import ConversationMessage, EncounterMessage, StreamMessage
from shared.streams import Groups

log = logging.getLogger(__name__)
ENCOUNTERS = Counter(
    "convo_scribe_encounters_total", "Ended conversations written down, by outcome", ["outcome"]
)


class Scribe:
    """Writes an ended conversation as an encounter, recorded in the person's profile once.

    The conversation's state goes once the encounter is in the stream (:meth:`committed`). A
    replica killed in between leaves it to :meth:`tick`, which clears what is written.
    """

    def __init__(
        self, client: redis.Redis, settings: MemorySettings, extractor: Extractor | None = None
    ) -> None:
        self.settings = settings
        self.store = PersonStore(client, settings.match, extractor, settings.wearer_name)
        self.conversations = Conversations(client)
        self.voices = VoiceIndex(client, settings.voice_match)
        self.redis = client
        self.every_s = settings.encounter.tick_s

    def __call__(self, msg: ConversationMessage) -> list[EncounterMessage]:
        """One ended conversation. A failure is retried (the entry is redelivered); after
        ``max_deliveries`` failures its state goes to ``dlq``, and the others go on without it."""
        c = self.conversations.closing(msg.encounter_id)
        if c is None:
            return []  # written already, or forgotten
        try:
            return self._encounter(c)
        except redis.RedisError:
            raise
        except Exception as exc:
            failures = self.conversations.failed(c.id)
            log.exception("encounter=%s session=%s outcome=failed failures=%d", c.id, c.session, failures)
            if failures < self.settings.consumer.max_deliveries:
                raise
            self.conversations.bury(
                c, f"{type(exc).__name__}: {exc}", self.settings.streams.dlq, self.settings.caps.dlq
            )
            ENCOUNTERS.labels("dlq").inc()
            return []

    def committed(self, outputs: Sequence[StreamMessage]) -> None:
        """The encounters are in the stream: their ended conversations' state can go."""
        for msg in outputs:
            if isinstance(msg, EncounterMessage):
                self.conversations.discard(msg.encounter_id)

    def tick(self) -> list[EncounterMessage]:
        """Clear the state of conversations whose encounter is written (a replica killed between
        the write and :meth:`committed`)."""
        eids = self.conversations.closing_ids()
        marks = (
            self.redis.mget([done_of(Groups.SCRIBE, ConversationMessage, e) for e in eids]) if eids else []
        )
        for eid, mark in zip(eids, marks, strict=True):
            if mark is not None:
                self.conversations.discard(eid)
        return []

    def _encounter(self, c: Closing) -> list[EncounterMessage]:
        """The ended conversation as an encounter, recorded in the person's profile (once)."""
        people = {p: w for p, w in c.people.items() if self.store.repo.exists(p)}  # one may be forgotten
        if not c.segments or not people:
            outcome = "no speech" if not c.segments else "no face"
            ENCOUNTERS.labels(outcome).inc()
            log.info("encounter=%s session=%s closed without a record: %s", c.id, c.session, outcome)
            self.conversations.discard(c.id)
            return []
        texts = [s["text"] for s in c.segments]
        speakers = self.conversations.speakers(c.session, [s["id"] for s in c.segments])
        pid = self._with_whom(people, texts)
        transcript = " ".join(texts)
        extraction = self._extract(texts, speakers)
        extraction = extraction.model_copy(
            update={"summary": encounter_summary(self.store.profile(pid), extraction)}
        )
        t_end = max(s["t_end"] for s in c.segments)
        with self.conversations.lock(c.session):  # two replicas writing it at once record it once
            self.store.record_encounter(
                pid, c.id, extraction, c.t_start, t_end, c.session, transcript, [s["id"] for s in c.segments]
            )
        self._keep_voices(c, pid, speakers)
        ENCOUNTERS.labels("recorded").inc()
        log.info(
            "encounter=%s session=%s person=%s segments=%d outcome=recorded", c.id, c.session, pid,
            len(c.segments),
        )  # fmt: skip
        facts = [{"text": f, "kind": "fact", "source": c.id} for f in extraction.facts]
        return [
            EncounterMessage(
                encounter_id=c.id, session=c.session, person_id=pid, t_start=c.t_start, t_end=t_end,
                transcript=transcript, summary=extraction.summary, facts=facts,
                name=extraction.name or "", company=extraction.company or "", role=extraction.role or "",
                place=extraction.place or "", topics=extraction.topics[:20],
                open_threads=extraction.open_threads[:20], backend=extraction.backend,
                lines=[
                    {"segment_id": seg["id"], "speaker": who, "text": seg["text"]}
                    for seg, who in zip(c.segments, speakers, strict=True)
                ],
            )
        ]  # fmt: skip

    def _with_whom(self, people: dict[str, float], texts: list[str]) -> str:
        """The person the conversation was with: the most evidence over it, a known person before a
        stranger, and one named in it before one who was not."""
        profiles = {p: self.store.profile(p) for p in people}
        bonus = self.settings.view.named_bonus
        weights = {p: w * (bonus if named(profiles[p].name, texts) else 1.0) for p, w in people.items()}
        pid = pick(weights, {p for p, person in profiles.items() if person.known})
        assert pid is not None
        if not profiles[pid].known and (named_instead := self._named_instead(pid, texts)):
            return named_instead
        return pid

    def _named_instead(self, pid: str, texts: list[str]) -> str | None:
        """A stranger's conversation in which a known person was named whose face the stranger's
        is borderline close to: it was them, seen too far off to be sure. The name settles it, as
        it does for a face (:meth:`PersonStore.match`), whichever came first."""
        views = self.store.views(pid)
        if views is None:
            return None

        def said(other: str) -> bool:
            return named(self.store.profile(other).name, texts)

        for view in views:
            match = self.store.match(view, exclude={pid}, named=said)
            if match.outcome == "named" and match.person_id:
                log.info("person=%s outcome=named-instead-of stranger=%s", match.person_id, pid)
                return match.person_id
        return None

    def _keep_voices(self, c: Closing, pid: str, speakers: list[str]) -> None:
        """The other person's lines become their voice views: those of the one voice that most of
        them share (:func:`one_voice`), leaving out any voice that is another known person's
        (someone else in the group spoke)."""
        theirs = [s["id"] for s, who in zip(c.segments, speakers, strict=True) if who == THEM]
        prints = {
            sid: np.frombuffer(data, "<f4")
            for sid, data in self.conversations.take_voiceprints(c.session, theirs).items()
        }
        one = one_voice(prints, self.settings.voice_match.same_voice)
        if len(one) < len(prints):
            log.info("person=%s outcome=voices-split lines=%d one-voice=%d", pid, len(prints), len(one))
        views = {
            f"{int(s['t_start'] * 1000)}-{s['id']}": prints[s["id"]].tobytes()
            for s in c.segments
            if s["id"] in one and self.voices.match(prints[s["id"]])[0] in (None, pid)
        }
        kept = self.store.repo.add_voices(pid, views, self.settings.voice_match.max_views)
        if views:
            log.info("person=%s voice views=%d (kept %d)", pid, len(views), kept)

    def _extract(self, texts: list[str], speakers: list[str]) -> Extraction:
        """What the conversation says about the other person. Once the wearer's voice marks their
        own lines, the person's facts come only from the other lines, and the wearer's own
        intentions ("I should send her the paper") become open threads."""
        transcript = " ".join(texts)
        if ME not in speakers:
            return grounded(self.store.extractor.extract(transcript, self.store.wearer), transcript)
        theirs = " ".join(t for t, who in zip(texts, speakers, strict=True) if who != ME)
        mine = " ".join(t for t, who in zip(texts, speakers, strict=True) if who == ME)
        extraction = (
            grounded(self.store.extractor.extract(theirs, self.store.wearer), theirs)
            if theirs
            else Extraction()
        )
        threads = [
            *extraction.open_threads,
            *(t for t in intentions(mine) if t not in extraction.open_threads),
        ]
        return extraction.model_copy(update={"open_threads": threads[:20]})
