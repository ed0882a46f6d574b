"""The people the wearer meets: ``PersonStore.process_encounter(face_embedding, transcript)`` is the
one-call entry point; the memory service uses ``identify`` for faces and ``record_encounter``
for finished conversations.

Redis is the source of truth (``repository.py``). Each replica keeps a :class:`FaceIndex` of
every person's views, brought up to date from the ``convo:persons:changes`` stream before
each match, so all replicas match against the same people. New persons are created under a
Redis lock with a re-match inside it, so two replicas seeing one new face create one person.
"""

import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import redis

from services.memory import recall
from services.memory.extract import Extraction, Extractor, RulesExtractor
from services.memory.face_index import FaceIndex
from services.memory.records import Card, Encounter, Person
from services.memory.repository import PersonRepository
from services.memory.settings import MatchSettings
from shared.schemas import BadMessageError, embedding_from_bytes, embedding_to_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """The answer for one face: a person, or why not."""

    person_id: str | None
    score: float
    runner_up: float
    outcome: str  # "match", "new", "ambiguous", "named" (a borderline match a name heard settled)


class PersonStore:
    """Person memory: who a face is, and what is known about them."""

    def __init__(
        self, client: redis.Redis, settings: MatchSettings, extractor: Extractor | None = None,
        wearer: str | None = None, candidate_ttl_s: float | None = None,
    ) -> None:  # fmt: skip
        self.redis = client
        self.candidate_ttl_s = candidate_ttl_s
        """New faces are candidates for this long (the memory service); ``None``: persons at once."""
        self.repo = PersonRepository(client)
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
        self._seen_change, changed = self.repo.changes_since(self._seen_change)
        if changed is None:
            self._load_all()
        elif changed:
            self.index.update({pid: self.repo.views(pid) for pid in changed})

    def _load_all(self) -> None:
        self._seen_change = self.repo.last_change()
        self.index = FaceIndex()
        for chunk in self.repo.all_views(self.repo.person_ids()):
            self.index.update(chunk)
        self._loaded = True

    # -- matching ------------------------------------------------------------------------

    def match(
        self, vector: np.ndarray, exclude: Collection[str] = (), named: Callable[[str], bool] | None = None
    ) -> Match:
        """Best person for a normed embedding: threshold, then margin over the runner-up. ``named``
        says whether a person was just named aloud; such a person settles a borderline match."""
        self.refresh()
        top = self.index.top_two(vector, exclude)
        if not top:
            return Match(None, 0.0, 0.0, "new")
        best = top[0][1]
        runner_up = top[1][1] if len(top) > 1 else 0.0
        confident = best >= self.settings.threshold and best - runner_up >= self.settings.margin
        # A confident match to a candidate still yields to a named person close behind: the
        # candidate is most likely this same face, seen a moment before the name was said.
        contested = named and runner_up >= self.settings.threshold - self.settings.named_slack
        if confident and not (contested and self.repo.standing(top[0][0])[1]):
            return Match(top[0][0], best, runner_up, "match")
        if settled := self._settle(top, named) if named else None:
            return settled
        if confident:
            return Match(top[0][0], best, runner_up, "match")
        return Match(None, best, runner_up, "new" if best < self.settings.threshold else "ambiguous")

    def _settle(self, top: list[tuple[str, float]], named: Callable[[str], bool]) -> Match | None:
        """The one person of the top two who was named aloud and scores within ``named_slack`` of
        the threshold, unless a known person scores clearly better."""
        slack = self.settings.named_slack
        said = [(pid, score) for pid, score in top if score >= self.settings.threshold - slack and named(pid)]
        if len(said) != 1:
            return None
        pid, score = said[0]
        if any(s > score + slack and self.repo.standing(p)[0] for p, s in top):
            return None
        others = [s for p, s in top if p != pid]
        return Match(pid, score, others[0] if others else 0.0, "named")

    def identify(
        self,
        embedding: bytes | np.ndarray,
        frame_id: str | None = None,
        thumb: bytes = b"",
        t: float | None = None,
        face_id: str | None = None,
        named: Callable[[str], bool] | None = None,
    ) -> Match:
        """Match a face, or make it a new person. Two faces of one frame never get the same person;
        the same face (``face_id``) handled again, after a crash say, gets the person it got before.
        A borderline face goes to a person ``named`` aloud (see :meth:`match`); it is not kept as a
        view of theirs, since only the name, not the face, made it theirs."""
        vector = embedding if isinstance(embedding, np.ndarray) else embedding_from_bytes(embedding)
        if isinstance(embedding, np.ndarray):
            embedding_from_bytes(embedding_to_bytes(vector))  # the same checks: size, finite, normed
        t = t if t is not None else time.time()
        face = face_id or "?"
        for _ in range(8):
            claims = self.repo.frame_claims(frame_id) if frame_id else {}
            exclude = {p for p, f in claims.items() if f != face or face == "?"}
            result = self.match(vector, exclude, named)
            if result.outcome == "new":
                result = self._create(vector, thumb, t, exclude)
            if result.person_id is None:
                return result
            if frame_id is None or self.repo.claim_in_frame(frame_id, result.person_id, face, t):
                if result.outcome == "match":
                    self._touch(result.person_id, vector, thumb, t)
                return result
        raise RuntimeError(f"could not give frame {frame_id} a person after 8 tries")

    def _create(self, vector: np.ndarray, thumb: bytes, t: float, exclude: set[str]) -> Match:
        # A full reload (100k persons: seconds) happens here, not under the 10 s lock below.
        self.refresh()
        with self.repo.new_person_lock():
            again = self.match(vector, exclude)  # another replica may have created them meanwhile
            if again.outcome != "new":
                return again
            until = time.time() + self.candidate_ttl_s if self.candidate_ttl_s is not None else None
            pid = self.repo.create(vector, thumb, t, candidate_until=until)
            self.refresh()
            log.info("person=%s outcome=new", pid)
            return Match(pid, 1.0, again.score, "new")

    def _touch(self, pid: str, vector: np.ndarray, thumb: bytes, t: float) -> None:
        """A confident match: keep the view if it is a new look, and the newest thumbnail."""
        views = self.index.views.get(pid)
        new_look = views is None or float((views @ vector).max()) < self.settings.new_view_below
        self.repo.add_view(pid, vector if new_look else None, thumb, t)
        if new_look:
            self.repo.trim_views(pid, self.settings.max_views)

    # -- profiles ------------------------------------------------------------------------

    def person_ids(self) -> list[str]:
        return self.repo.person_ids()

    def profile(self, pid: str) -> Person:
        """A person with their facts and encounters; ``KeyError`` if there is no such person."""
        return self.repo.get(pid)

    def views(self, pid: str) -> np.ndarray | None:
        """A person's stored views, oldest first; ``None`` for none."""
        return self.repo.views(pid)

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
        """Store a finished conversation and fold what it said into the person's profile (once).

        ``segment_ids`` name the speech it came from, so that ``forget`` can find it.
        """
        encounter = Encounter(
            id=eid, person_id=pid, session=session, t_start=t_start, t_end=t_end, transcript=transcript,
            summary=extraction.summary, place=extraction.place or "", topics=extraction.topics,
            open_threads=extraction.open_threads, backend=extraction.backend, segments=segment_ids or [],
        )  # fmt: skip
        try:
            self.repo.record_encounter(encounter, extraction)
        except KeyError:
            raise BadMessageError(f"encounter {eid}: no person {pid}") from None

    def recall(self, pid: str, now: float | None = None, person: Person | None = None) -> Card:
        """What the card shows about ``pid`` now (see :func:`recall.card`).

        ``person`` is the profile when the caller has it already.
        """
        now = now if now is not None else time.time()
        return recall.card(person or self.profile(pid), self.repo.last_encounter(pid), now)

    def recall_summary(self, pid: str, now: float | None = None, person: Person | None = None) -> str:
        """The card as one line of text."""
        return self.recall(pid, now, person).summary

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
        known = result.outcome == "match" and self.repo.has_encounters(result.person_id)
        summary = self.recall_summary(result.person_id, now=t) if known else ""
        extraction = self.extractor.extract(transcript, self.wearer)
        eid = f"e-{uuid.uuid4().hex[:12]}"
        self.record_encounter(result.person_id, eid, extraction, t, t, session, transcript)
        return summary or f"First meeting: {extraction.summary}"
