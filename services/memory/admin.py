"""Person admin: list, show, rename, merge, "not this person", and forget everywhere."""

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
from pydantic import Field

from services.memory.conversations import Conversations
from services.memory.person_store import PersonStore
from services.memory.records import Person
from services.memory.repository import text
from services.memory.suggest import Review
from services.memory.view import Views
from services.trainer.dataset import Dataset
from services.trainer.registry import AdapterRegistry
from services.trainer.settings import DatasetSettings
from shared.streams import StreamNames

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes]


class PersonDetail(Person):
    """A person with what the card says about them now and their view ids."""

    summary: str = Field(description="What the recall card says about them now")
    view_ids: list[str] = Field(description="Stored face views; one can be split off as 'not this person'")


class PersonAdmin:
    """Operations on persons that change what memory believes. Every one keeps replicas in step."""

    def __init__(
        self, store: PersonStore, streams: StreamNames, dataset: DatasetSettings | None = None
    ) -> None:
        self.store = store
        self.repo = store.repo
        self.redis = store.redis
        self.streams = streams
        self.dataset = dataset or DatasetSettings()
        self.review = Review(self.repo, store.settings.threshold)

    def list(self, candidates: bool = False) -> list[Person]:
        """Every person (or, with ``candidates``, every candidate), most recently seen first."""
        people = (self.repo.get(pid) for pid in self.repo.person_ids())
        return sorted((p for p in people if p.candidate == candidates), key=lambda p: -p.last_seen)

    def show(self, pid: str) -> PersonDetail:
        person = self.repo.get(pid)
        summary = self.store.recall_summary(pid, person=person)
        return PersonDetail(**person.model_dump(), summary=summary, view_ids=self.repo.view_ids(pid))

    def rename(self, pid: str, name: str) -> None:
        self.repo.rename(pid, name)

    def merge(self, keep: str, drop: str) -> None:
        """``drop`` was ``keep`` all along: move its views, facts and encounters over."""
        if keep == drop:
            raise ValueError("cannot merge a person into themselves")
        self.review.label(keep, drop, same=True)
        self.repo.merge(keep, drop)
        Conversations(self.redis).repoint(drop, keep)
        self.repo.trim_views(keep, self.store.settings.max_views)

    def different(self, a: str, b: str) -> None:
        """The wearer says two persons are different people: a label, and no more suggestion."""
        self.repo.get(a), self.repo.get(b)  # KeyError if either is unknown
        self.review.label(a, b, same=False)

    def split(self, pid: str, view_id: str) -> str:
        """ "Not this person": move one view out of ``pid`` into a new person; returns the new id."""
        return self.repo.split(pid, view_id)

    def forget(self, pid: str) -> dict[str, int]:
        """Remove a person everywhere: views, facts, encounters, every stream entry that holds their
        id, their face or what they said, and their training rows; adapters trained on them are
        marked as holding forgotten data. Returns what was done, as counts."""
        person = self.repo.get(pid)
        views = self.repo.views(pid)
        segments = {s for eid in person.encounter_ids if (e := self.repo.encounter(eid)) for s in e.segments}
        counts: Counter[str] = Counter(
            views=person.views, facts=len(person.facts), encounters=len(person.encounter_ids)
        )
        self._scrub_streams(pid, views, self.repo.lineage(pid), segments, counts)
        ended = set(person.encounter_ids)  # the hand-overs to the scribe: ids and times only, but theirs
        self._drop_entries(
            self.streams.conversations, counts, lambda f: text(f.get(b"encounter_id", b"")) in ended
        )
        self.repo.delete(pid, person.encounter_ids)
        self.repo.drop_changes_of(pid)
        counts["training rows"] = Dataset(self.dataset).forget(pid)
        counts["adapters with forgotten data"] = AdapterRegistry(self.redis).mark_forgotten(pid)
        Conversations(self.redis).repoint(pid, None)
        Views(self.redis).forget(pid)
        log.info("person=%s forgotten: %s", pid, dict(counts))
        return dict(counts)

    def expire(self, pid: str) -> dict[str, int]:
        """A candidate's time is up: remove its views, thumbnail and every stream entry of its face.
        A candidate was never talked to, so it has no encounters, facts or training rows."""
        person = self.repo.get(pid)
        if not person.candidate:
            return {}
        counts: Counter[str] = Counter(views=person.views)
        self._scrub_streams(pid, None, self.repo.lineage(pid), set(), counts)
        self.repo.delete(pid, person.encounter_ids)
        self.repo.drop_changes_of(pid)
        Conversations(self.redis).repoint(pid, None)
        Views(self.redis).forget(pid)
        log.info("person=%s outcome=expired %s", pid, dict(counts))
        return dict(counts)

    def _scrub_streams(
        self, pid: str, views: np.ndarray | None, faces: set[str], segments: set[str], counts: Counter[str]
    ) -> None:
        """Delete every stream entry that holds the person's id, face or speech.

        Faces go by lineage (the face ids memory gave them), so another person who looks alike
        keeps theirs. Only a dead-lettered face, which was never given to anyone, is judged by
        its likeness to the person's views.
        """
        frame_ids = self._drop_entries(
            self.streams.faces, counts, lambda f: text(f.get(b"face_id", b"")) in faces
        )
        self._drop_entries(self.streams.frames, counts, lambda f: text(f.get(b"frame_id", b"")) in frame_ids)
        spoken = (self.streams.transcripts, self.streams.audio_segments, self.streams.voices)
        for stream in (*spoken, self.streams.audio_partials, self.streams.partial_transcripts):
            self._drop_entries(stream, counts, lambda f: text(f.get(b"segment_id", b"")) in segments)
        for stream in (self.streams.recalls, self.streams.encounters):
            self._drop_entries(stream, counts, lambda f: text(f.get(b"person_id", b"")) == pid)
        self._drop_entries(
            self.streams.dlq, counts,
            lambda f: text(f.get(b"f.person_id", b"")) == pid
            or text(f.get(b"f.segment_id", b"")) in segments
            or text(f.get(b"f.frame_id", b"")) in frame_ids
            or self._is_face_of({b"embedding": f.get(b"f.embedding", b"")}, views),
        )  # fmt: skip

    def _is_face_of(self, fields: Fields, views: np.ndarray | None) -> bool:
        data = fields.get(b"embedding", b"")
        if views is None or len(data) != views.shape[1] * 4:
            return False
        vector = np.frombuffer(data, dtype="<f4")
        return bool(np.isfinite(vector).all() and (views @ vector).max() >= self.store.settings.threshold)

    def _drop_entries(self, stream: str, counts: Counter[str], doomed: Callable[[Fields], bool]) -> set[str]:
        """XDEL the entries of ``stream`` for which ``doomed(fields)`` holds; returns their frame ids."""
        ids, frames = [], set()
        for entry_id, fields in self.redis.xrange(stream):
            if doomed(fields):
                ids.append(entry_id)
                frames.add(text(fields.get(b"frame_id", b"")))
        if ids:
            self.redis.xdel(stream, *ids)
            counts[f"stream:{stream}"] += len(ids)
        return frames
