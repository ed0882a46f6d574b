"""Faces, transcripts and voices in; recall cards and ended conversations out."""

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter

from services.memory.admin import PersonAdmin
from services.memory.conversations import Conversations
from services.memory.extract import RulesExtractor, introduces_another
from services.memory.grounding import grounded
from services.memory.person_store import PersonStore
from services.memory.records import Person
from services.memory.settings import MemorySettings
from services.memory.view import Sighting, Views, evidence, named, rank, subject
from services.memory.voices import VoiceIndex
from services.memory.wearer import ME, THEM, Wearer
from shared.schemas import (
    BadMessageError,
    FaceMessage,
    PartialTranscriptMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
    VoiceMessage,
)
from shared.streams import Groups

log = logging.getLogger(__name__)
CAUGHT_UP_S = 5.0
FUTURE_S = 600.0
"""Clocks drift; an entry stamped further ahead than this is refused."""


def split(segments: Sequence[dict[str, Any]], gap_s: float) -> list[list[dict[str, Any]]]:
    """Segments (oldest first) cut where speech pauses for longer than ``gap_s``."""
    groups: list[list[dict[str, Any]]] = []
    end = float("-inf")
    for segment in segments:
        if segment["t_start"] - end > gap_s:
            groups.append([])
        groups[-1].append(segment)
        end = max(end, segment["t_end"])
    return groups


MATCHES = Counter("convo_memory_faces_total", "Faces by outcome", ["outcome"])
VOICES = Counter("convo_memory_voices_total", "Other voices heard, by outcome", ["outcome"])


class MemoryHandler:
    """Identifies faces, assembles each session's conversation, and closes it when it goes quiet.

    It decides; the person store and the conversations (``conversations.py``) keep the state in
    Redis, so any replica can add to a conversation or close it.
    """

    def __init__(self, client: redis.Redis, settings: MemorySettings) -> None:
        self.settings = settings
        self.store = PersonStore(
            client, settings.match, None, settings.wearer_name, settings.view.candidate_ttl_s
        )
        self.conversations = Conversations(
            client, settings.streams.conversations, settings.caps.conversations
        )
        self.views = Views(client)
        self.admin = PersonAdmin(self.store, settings.streams, settings.dataset)
        self.wearer = Wearer(client, settings.voice_match.wearer_threshold)
        self.voices = VoiceIndex(client, settings.voice_match)
        self.every_s = settings.encounter.tick_s

    @property
    def handlers(self) -> dict[type[StreamMessage], Callable[..., list[RecallMessage]]]:
        """What memory consumes, by stream; the consumer handles and writes them in this order:
        faces first, so that voices and words of a batch find who is in view, and voices before
        words, so that words find whose voice said them (in real time the voice stage is the
        faster one anyway)."""
        return {
            FaceMessage: self.on_face,
            VoiceMessage: self.on_voice,
            TranscriptMessage: self.on_transcript,
            PartialTranscriptMessage: self.on_partial,
        }

    def _known_session(self, session: str) -> None:
        if not self.conversations.known_session(session):
            raise BadMessageError(f"unknown session {session!r}: no capture announced it")

    @staticmethod
    def _check_time(what: str, *times: float) -> None:
        """A time from the future (or none at all) would hold a session's card and conversation."""
        latest = time.time() + FUTURE_S
        if not all(math.isfinite(t) and 0 < t <= latest for t in times):
            raise BadMessageError(f"{what}: time {times} is not a capture time (epoch s, not in the future)")

    # -- faces ---------------------------------------------------------------------------

    def on_face(self, msg: FaceMessage) -> list[RecallMessage]:
        vector = msg.vector()
        self._known_session(msg.session)
        self._check_time(f"face {msg.face_id}", msg.t)
        said, maybe = self._named_just_now(msg.session, msg.t)
        result = self.store.identify(
            vector, frame_id=msg.frame_id, thumb=msg.thumb, t=msg.t, face_id=msg.face_id, named=said,
        )  # fmt: skip
        MATCHES.labels(result.outcome).inc()
        log.info(
            "face=%s person=%s outcome=%s score=%.2f",
            msg.face_id,
            result.person_id,
            result.outcome,
            result.score,
        )
        if maybe:
            self.views.maybe(msg.session, maybe, msg.t, result.person_id or "")
        if result.person_id is not None:
            self._sighting(msg, result.person_id, result.score)
        if not self.views.frame_done(msg.frame_id, msg.face_id, msg.faces_in_frame):
            return []  # the card is decided once every face of the frame is in
        return self._card(msg.session, msg.t, msg.face_id)

    def _named_just_now(self, session: str, t: float) -> tuple[Callable[[str], bool], list[str]]:
        """Whether a person's first name was said in the session in the last ``view_s`` (read only
        for a borderline face, so a confident match costs nothing); and the known persons asked
        about, filled in as the face is matched: they are *maybe* in view. Their names go to the
        transcriber's context, since the wearer may be about to say one, and when one is said the
        face is theirs (:meth:`_settle_named`)."""
        lines: list[str] | None = None
        maybe: list[str] = []

        def said(pid: str) -> bool:
            nonlocal lines
            if lines is None:
                lines = self.views.heard_since(session, t - self.settings.view.view_s)
            known, _ = self.store.repo.standing(pid)
            if known:
                maybe.append(pid)
            return bool(lines) and named(self.store.profile(pid).name, lines)

        return said, maybe

    def _sighting(self, msg: FaceMessage, pid: str, score: float) -> None:
        """Evidence that ``pid`` is in view, for the card and for who the conversation is with."""
        view = self.settings.view
        known, candidate = self.store.repo.standing(pid)
        weight = evidence(msg.bbox, msg.width, msg.height, msg.det_score)
        self.conversations.seen(msg.session, pid, weight * (view.known_bonus if known else 1.0), msg.t)
        self.views.see(msg.session, pid, msg.t, weight, known, view.view_s, score)
        if candidate and msg.faces_in_frame <= view.promote_max_faces:
            sessions, frames = self.store.repo.note_session(pid, msg.session)
            if sessions >= view.promote_sessions and frames >= view.promote_frames:
                self.store.repo.promote(pid)
                log.info("person=%s outcome=promoted sessions=%d frames=%d", pid, sessions, frames)

    def _card(
        self, session: str, t: float, recall_id: str, note: str = "", who: str | None = None
    ) -> list[RecallMessage]:
        """The card for who is in view at ``t``, if it is news: another person than the one shown,
        the same one back in view, a renewal while they stay, or ``note``. No stranger's card
        while a face in view scores borderline against someone known: a wrong "first time you
        meet" for a friend far off is worse than a moment with no card, and the name, a better
        view or an introduction settles it. ``who``: whose card it is, when the caller knows (the
        person just introduced)."""
        view = self.settings.view
        ranked = rank(self.views.view(session), t, view.view_s, view.known_bonus)
        lines = self.views.heard_since(session, t - view.view_s)
        known = self._known_in_view(ranked)
        said = {pid for pid, p in known.items() if named(p.name, lines)}
        speaking = self.views.speaking(session, t - view.view_s)
        voiced = sorted((p for p in speaking if p in known), key=lambda p: -speaking[p])
        # the one whose voice is speaking is the one talked to, wherever their face is in the group
        top = next((s for s in ranked if s.pid == (who or voiced[0])), None) if who or voiced else None
        top = top or subject(ranked, view.known_bonus, said, view.named_bonus)
        maybe = list(self.views.maybes(session, t - view.view_s))
        if top is not None and not top.known and not note and maybe:
            self._context(session, known, maybe)  # their name may be said: tell the transcriber
            return []  # a face in view may be someone known: quiet, not "first time you meet"
        shown = self.views.shown(session)
        if top is None or (shown is not None and t < shown.t):
            return []  # nobody in view, or an older frame than the card's
        if shown is not None and shown.pid == top.pid and t - shown.t < view.view_s / 2 and not note:
            return []
        person = known.get(top.pid) or self.store.profile(top.pid)
        card = self.store.recall(top.pid, now=t, person=person)
        self._context(session, known, maybe)
        others = [p.name for pid, p in known.items() if pid != top.pid]
        strangers = sum(1 for s in ranked if not s.known and s.pid != top.pid)
        self.views.show(session, top.pid, t, 10 * view.view_s)
        return [
            RecallMessage(
                recall_id=recall_id, person_id=top.pid, similarity=round(top.score, 4), t=t,
                thumb=person.thumb, others=[o for o in others if o][:20], strangers=strangers,
                stay_s=view.view_s, note=note,
                **card.model_dump(),
            )
        ]  # fmt: skip

    def _known_in_view(self, ranked: list[Sighting]) -> dict[str, Person]:
        """The profiles of the known people in view, in rank order (read once per decision)."""
        return {s.pid: self.store.profile(s.pid) for s in ranked if s.known}

    def _context(self, session: str, known: dict[str, Person], maybe: list[str]) -> None:
        """Tell the transcriber whom the speech is likely about: the known people in view, then
        those a borderline face in view might be (``maybe``; one forgotten since is skipped)."""
        people = dict(known)
        for pid in maybe:
            with contextlib.suppress(KeyError):
                people.setdefault(pid, self.store.profile(pid))
        words: list[str] = []
        for pid, p in people.items():
            last = self.store.repo.last_encounter(pid)
            words += [*p.name.split(), p.company, *(last.topics[:2] if last else [])]
        self.views.set_context(session, [w for w in words if w], 10 * self.settings.view.view_s)

    # -- transcripts and conversations ---------------------------------------------------

    def on_transcript(self, msg: TranscriptMessage) -> list[RecallMessage]:
        if not msg.text.strip():
            raise BadMessageError(f"segment {msg.segment_id}: empty transcript")
        self._known_session(msg.session)
        self._check_time(f"segment {msg.segment_id}", msg.t_start, msg.t_end)
        segment = {"id": msg.segment_id, "t_start": msg.t_start, "t_end": msg.t_end, "text": msg.text}
        self.conversations.heard(msg.session, segment)
        return self._introduction(msg)

    # -- voices ----------------------------------------------------------------------------

    def on_voice(self, msg: VoiceMessage) -> list[RecallMessage]:
        """Who said a segment: the wearer (``me``) when it is their enrolled voice, else ``them``;
        and for ``them``, which known person it sounds like (see :meth:`_heard_voice`)."""
        vector = msg.vector()
        self._known_session(msg.session)
        self._check_time(f"voice {msg.segment_id}", msg.t_start, msg.t_end)
        speaker, score = self.wearer.speaker(vector)
        if speaker:
            self.conversations.voice(msg.session, msg.segment_id, speaker, score)
        if speaker != THEM or msg.speech_s < self.settings.voice_match.min_speech_s:
            return []  # with no enrolled wearer, a voice could be the wearer's own
        self.conversations.voiceprint(msg.session, msg.segment_id, msg.embedding)
        pid, score = self.voices.match(vector)
        VOICES.labels("match" if pid else "unknown").inc()
        return self._heard_voice(msg, pid, score) if pid else self._unknown_voice(msg, vector)

    def _unknown_voice(self, msg: VoiceMessage, vector: np.ndarray) -> list[RecallMessage]:
        """A voice no known person has. Heard while one face alone is in view, it is most likely
        that face's, and is kept with it for the session; in a group, the face it was heard with
        is the one speaking (a face does not show who speaks; a voice does). The speaker holds the
        moment's evidence, as a known voice does: the one who spoke to the wearer stays the one
        talked to when a larger face steps into the view."""
        view = self.settings.view
        ranked = rank(self.views.view(msg.session), msg.t_end, view.view_s, view.known_bonus)
        if len(ranked) == 1:
            self.views.heard_with(msg.session, ranked[0].pid, msg.segment_id, msg.embedding)
        speaker = ranked[0] if len(ranked) == 1 else self._voice_in_view(msg.session, vector, ranked, None)
        if speaker is None:
            return []
        weight = self.settings.voice_match.weight * (view.known_bonus if speaker.known else 1.0)
        self.conversations.seen(msg.session, speaker.pid, weight + sum(s.evidence for s in ranked), msg.t_end)
        self.views.see(msg.session, speaker.pid, msg.t_end, weight, speaker.known, view.view_s)
        log.info("segment=%s person=%s outcome=voice_in_view", msg.segment_id, speaker.pid)
        return self._card(msg.session, msg.t_end, msg.segment_id)

    def _voice_in_view(
        self, session: str, vector: np.ndarray, ranked: list[Sighting], known: str | None
    ) -> Sighting | None:
        """The face in a group that ``vector`` is the voice of: ``known`` (the known person the
        voice matched, if any) when in view, else one whose voice was heard while it was alone in
        view; ``None`` when no face's voice is known well enough."""
        if len(ranked) < 2:
            return None
        in_view = {s.pid: s for s in ranked}
        if known not in in_view:
            match = self.settings.voice_match
            known = self.views.whose_voice(session, vector, list(in_view), match.same_voice, match.margin)
        return in_view.get(known) if known else None

    def _heard_voice(self, msg: VoiceMessage, pid: str, score: float) -> list[RecallMessage]:
        """A known person's voice. In view, it adds to their evidence (the face that speaks ranks
        first in a group) and the conversation's. Out of view, their card says "by voice", unless
        someone else known is in view, or a face in view may be someone else known (it scores
        borderline against them): a face and a voice that disagree make no card."""
        view = self.settings.view
        weight = self.settings.voice_match.weight * view.known_bonus
        ranked = rank(self.views.view(msg.session), msg.t_end, view.view_s, view.known_bonus)
        in_view = {s.pid for s in ranked}
        others_known = set(self._known_in_view(ranked)) - {pid}
        if pid not in in_view:
            maybe = self.views.maybes(msg.session, msg.t_end - view.view_s)
            if pid not in maybe:
                others_known |= set(maybe)  # a face in view may be one of them, and not this voice's
        if pid not in in_view and others_known:
            log.info(
                "segment=%s voice=%s outcome=disagrees faces=%s", msg.segment_id, pid, sorted(others_known)
            )
            return []
        # the speaker holds the conversation's evidence of this moment: as much as every face in view
        self.conversations.seen(msg.session, pid, weight + sum(s.evidence for s in ranked), msg.t_end)
        self.views.see(msg.session, pid, msg.t_end, weight, True, view.view_s, score)
        self.views.voiced(msg.session, pid, msg.t_end)
        note = "" if pid in in_view else "by voice"
        log.info("segment=%s person=%s outcome=voice score=%.2f %s", msg.segment_id, pid, score, note)
        return self._card(msg.session, msg.t_end, msg.segment_id, note=note)

    def on_partial(self, msg: PartialTranscriptMessage) -> list[RecallMessage]:
        """Live words are evidence of a name a second or more before the utterance's transcript:
        "Sarah! Over here" settles Sarah's borderline face while she is still being greeted. They
        go to no conversation, and introduce no one (the transcript does that, once it is final)."""
        self._known_session(msg.session)
        self._check_time(f"partial {msg.partial_id}", msg.t_start, msg.t_end)
        text = f"{msg.stable} {msg.pending}".strip()
        if not text:
            return []  # nothing recognisable yet
        return self._named_aloud(msg.session, msg.t_end, text, msg.partial_id)[1] or []

    def _named_aloud(
        self, session: str, t: float, text: str, recall_id: str
    ) -> tuple[list[Sighting], list[RecallMessage] | None]:
        """Keep what was said, for the names in it; a known person in view who is named aloud is the
        one talked to, so the card is decided again. Returns who is in view, and the card when a
        known person in view was named (an empty list when it is no news)."""
        view = self.settings.view
        self.views.heard(session, t, text)
        ranked = rank(self.views.view(session), t, view.view_s, view.known_bonus)
        if not ranked:
            return [], None  # a name said with nobody in view makes no card
        settled = self._settle_named(session, t, text, ranked)
        if settled or any(named(p.name, [text]) for p in self._known_in_view(ranked).values()):
            return ranked, self._card(session, self._now(session, t), recall_id)
        return ranked, None

    def _settle_named(self, session: str, t: float, text: str, ranked: list[Sighting]) -> bool:
        """A known person that a borderline face in view may be, named aloud just now: the face is
        theirs from this moment, not from its next frame (which may never come: frames go only
        while someone speaks). The face's evidence is theirs too, for the card and the conversation."""
        view = self.settings.view
        faces = {s.pid: s for s in ranked if not s.known}
        settled = False
        for pid, face_pid in self.views.maybes(session, t - view.view_s).items():
            face = faces.get(face_pid)
            if face is None:
                continue  # gone from view, or given to someone known
            try:
                name = self.store.profile(pid).name
            except KeyError:
                continue  # forgotten meanwhile
            if named(name, [text]):
                self.views.see(session, pid, face.t, face.evidence, True, view.view_s, face.score)
                self.conversations.seen(session, pid, face.evidence * view.known_bonus, face.t)
                log.info("person=%s outcome=named face_person=%s", pid, face_pid)
                settled = True
        return settled

    def _now(self, session: str, t: float) -> float:
        shown = self.views.shown(session)
        return max(t, shown.t if shown else t)  # frames may be ahead of the speech

    def _introduction(self, msg: TranscriptMessage) -> list[RecallMessage]:
        """Names heard are evidence (:meth:`_named_aloud`); a self-introduction names the
        interlocutor at once, on the live card."""
        view = self.settings.view
        ranked, card = self._named_aloud(msg.session, msg.t_end, msg.text, msg.segment_id)
        if card is not None or not ranked:
            return card or []
        now = self._now(msg.session, msg.t_end)
        if self.conversations.speakers(msg.session, [msg.segment_id]) == [ME]:
            return []  # the wearer introducing themselves
        intro = grounded(RulesExtractor().extract(msg.text, self.store.wearer), msg.text)
        if not intro.name:
            return []
        # The best-ranked person in view with no name yet: beside a friend, who has one, "Hi, I'm
        # Maya" is the stranger's (the friend's own name said aloud was handled above). When the
        # voice tells whose face speaks, "I'm Chris" is that face's. A name given to another
        # ("Alex, this is Priya") is not the speaker's: it goes to someone beside them, the
        # speaker being the face whose voice it is, else the one talking to the wearer, the
        # best-ranked.
        speaker = None
        if voice := self.conversations.voiceprint_of(msg.session, msg.segment_id):
            vector = np.frombuffer(voice, "<f4")
            speaker = self._voice_in_view(msg.session, vector, ranked, self.voices.match(vector)[0])
        if introduces_another(msg.text, intro.name):
            if speaker is not None:
                ranked = [s for s in ranked if s.pid != speaker.pid]
            elif len(ranked) > 1:
                ranked = ranked[1:]
        elif speaker is not None:
            ranked = [speaker]
        introduce = self.store.repo.introduce
        pid = next((s.pid for s in ranked if introduce(s.pid, intro.name, intro.company)), None)
        if pid is None:
            return []
        self.views.see(msg.session, pid, now, 0.0, True, view.view_s)
        log.info("person=%s outcome=introduced segment=%s", pid, msg.segment_id)
        return self._card(msg.session, now, msg.segment_id, note="introduced just now", who=pid)

    def tick(self) -> list[StreamMessage]:
        """End the conversations that are over; the scribe writes them down (``services/scribe``).

        A session's segments are cut into conversations where speech pauses for longer than
        ``gap_s`` (speech time). A conversation followed by another is over once every segment
        that could still belong to it has been transcribed and handled (:meth:`_settled`); the
        last one is over when the session is also quiet: no speech for ``gap_s`` and nothing
        handled for it for ``gap_s``, since transcripts trail the speech by the transcriber's
        latency. Sealing an ended conversation hands it over on the ``conversations`` stream in
        the same step, so a replica killed at any point loses none and hands none over twice.
        """
        now = self.conversations.now()
        for pid in self.store.repo.expired_candidates(time.time()):
            self.admin.expire(pid)
        if self._caught_up(now):
            for session in self.conversations.open_sessions():
                self._cut(session, now)
        return []

    def _cut(self, session: str, now: float) -> None:
        """Seal the session's conversations that are over."""
        state = self.conversations.open_state(session)
        if state is None:
            return
        gap = self.settings.encounter.gap_s
        groups = split(state.segments, gap)
        quiet = (
            now - state.t_seen > gap
            and (not groups or now - max(s["t_end"] for s in groups[-1]) > gap)
            and not self.conversations.speaking(session)  # an utterance capture is still cutting
        )
        # every segment of a conversation was spoken, so written, before any of the next one's
        handled = [max(s["at"] for g in groups[i + 1 :] for s in g) for i in range(len(groups) - 1)]
        done = [g for g, at in zip(groups, handled, strict=False) if self._settled(at)]
        if quiet and len(done) == len(groups) - 1 and self._settled(now - 1.0):
            done = groups
        if quiet and not groups:
            if self._settled(now - 1.0):  # speech may still be on its way to the transcriber
                self.conversations.seal(session, [], (state.t_seen - gap, now), last=True)
            return
        for i, group in enumerate(done):
            following = groups[i + 1][0]["t_start"] if i + 1 < len(groups) else float("inf")
            end = max(s["t_end"] for s in group)
            window = (group[0]["t_start"] - gap / 2, min(end + gap / 2, following - gap / 2))
            self.conversations.seal(session, group, window, last=group is groups[-1])

    def _settled(self, since: float) -> bool:
        """Whether every segment capture wrote before ``since`` (server clock) has been transcribed,
        and memory has handled every transcript written until now: then every segment spoken
        before one handled at ``since`` is here."""
        check = self.conversations.now()
        streams = self.settings.streams
        for stream, group in (
            (streams.audio_segments, Groups.TRANSCRIBER),
            (streams.audio_segments, Groups.VOICE),
        ):
            waiting = self.conversations.oldest_unfinished(stream, group)
            if waiting is not None and waiting <= since:
                return False
        for stream in (streams.transcripts, streams.voices):
            heard = self.conversations.oldest_unfinished(stream, Groups.MEMORY)
            if heard is not None and heard <= check:
                return False
        return True

    def committed(self, outputs: Sequence[StreamMessage]) -> None:
        """The tick writes nothing itself: an ended conversation's hand-over is written with it."""

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
