"""Every stream, consumer-group and key name the project uses, in one place.

Stream names are settings (``CONVO_STREAMS__TRANSCRIPTS=...``) so that a second
deployment can share one Redis; everything else here is fixed.
"""

from pydantic import BaseModel, ConfigDict

KEY_PREFIX = "convo"


class StreamNames(BaseModel):
    """Names of the streams, as DESIGN's stream table gives them."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    audio_segments: str = "audio:segments"
    """VAD speech segments from capture."""
    audio_partials: str = "audio:partials"
    """An utterance still going on, as far as it was heard, every ``partial_every_s`` (capture)."""
    frames: str = "frames"
    """Camera frames taken during speech, from capture."""
    transcripts: str = "transcripts"
    """Text of each speech segment, from the transcriber."""
    partial_transcripts: str = "transcripts:partial"
    """Live words of an utterance still going on, from the transcriber, for the overlay only."""
    faces: str = "faces"
    """One entry per detected face, from the face service."""
    voices: str = "voices"
    """One speaker embedding per speech segment, from the voice service."""
    recalls: str = "recalls"
    """Recall cards for the overlay, from memory."""
    conversations: str = "conversations"
    """Conversations memory has ended, for the scribe to write down."""
    encounters: str = "encounters"
    """Finished conversations, written down by the scribe."""
    dlq: str = "dlq"
    """Entries that could not be handled, with their error."""
    trainer_runs: str = "trainer:runs"
    """One entry per trained adapter, from the trainer."""


class StreamCaps(BaseModel):
    """Approximate ``MAXLEN`` per stream: the hard bound on memory, applied on every write."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")

    audio_segments: int = 5_000
    """Segments carry raw PCM (about 32 KB per second of speech). Not applied on write: speech is
    never trimmed before every group has acknowledged it; retention and ``convo gc`` apply it."""
    audio_partials: int = 200
    """Partial audio is only worth its first seconds: under load the oldest go first."""
    frames: int = 5_000
    """Frames carry JPEGs (about 50 KB each at 640x480). Capture's backpressure keeps the unread
    part far below this."""
    transcripts: int = 100_000
    """Text only."""
    partial_transcripts: int = 2_000
    """Live words, replaced by the transcript once the utterance ends."""
    faces: int = 100_000
    """A 2 KB embedding plus a small thumbnail each."""
    voices: int = 100_000
    """A 1 KB embedding each."""
    recalls: int = 10_000
    """Cards shown on the overlay."""
    conversations: int = 10_000
    """Hand-overs of ended conversations; small, and read at once."""
    encounters: int = 100_000
    """The conversation history the trainer reads."""
    dlq: int = 10_000
    """Dead letters wait here for an operator."""
    trainer_runs: int = 1_000
    """Adapter announcements."""


NEVER_TRIMMED_ON_WRITE = frozenset({"audio_segments"})
"""Streams written without MAXLEN: dropping speech silently is never acceptable."""


class Groups:
    """Consumer-group names, one per stage."""

    TRANSCRIBER = "transcriber"
    FACE = "face"
    VOICE = "voice"
    MEMORY = "memory"
    SCRIBE = "scribe"
    OVERLAY = "overlay"
    TRAINER = "trainer"


def stream_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``"<ms>-<seq>"``) as a pair that orders as Redis orders ids."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, seq = text.split("-")
    return int(ms), int(seq)


def done_key(group: str, message_key: str) -> str:
    """Marks that ``group`` has written the outputs for one message (the idempotency record)."""
    return f"{KEY_PREFIX}:done:{group}:{message_key}"


def heartbeat_key(group: str, consumer: str = "*") -> str:
    """Refreshed with a TTL by each live consumer; read by ``--check``. ``*`` matches any consumer."""
    return f"{KEY_PREFIX}:heartbeat:{group}:{consumer}"


class MemoryKeys:
    """Keys of the person memory. Redis is the source of truth; replicas keep only caches."""

    PERSONS = f"{KEY_PREFIX}:persons"  # SET of person ids
    SESSIONS = f"{KEY_PREFIX}:sessions"  # SET of session ids capture announced
    OPEN_SESSIONS = f"{KEY_PREFIX}:sessions:open"  # SET of sessions with a conversation in progress
    CLOSING = f"{KEY_PREFIX}:sessions:closing"  # SET of ended conversations not yet written to encounters
    CHANGES = f"{KEY_PREFIX}:persons:changes"  # STREAM: one entry per person whose views changed
    CANDIDATES = f"{KEY_PREFIX}:persons:candidates"  # ZSET: faces not yet persons, by when they expire
    LABELS = f"{KEY_PREFIX}:persons:labels"  # HASH "a|b" -> JSON {same, score}: the wearer's answers
    NEW_PERSON_LOCK = f"{KEY_PREFIX}:lock:new-person"
    VOICED = f"{KEY_PREFIX}:persons:voiced"  # SET of persons with voice views
    VOICES_VERSION = f"{KEY_PREFIX}:persons:voices:version"  # counter: any person's voice views changed
    WEARER_VOICE = f"{KEY_PREFIX}:wearer:voice"  # HASH view id -> float32 voice embedding (enrolled)

    @staticmethod
    def person(pid: str) -> str:
        """HASH: name, company, role, first_seen, last_seen, encounters, thumb."""
        return f"{KEY_PREFIX}:person:{pid}"

    @staticmethod
    def faces(pid: str) -> str:
        """HASH view id -> float32 embedding: the person's capped set of views."""
        return f"{KEY_PREFIX}:person:{pid}:faces"

    @staticmethod
    def voices(pid: str) -> str:
        """HASH view id (``<ms>-<segment>``) -> float32 voice embedding: how the person sounds,
        from their own lines; capped like the face views."""
        return f"{KEY_PREFIX}:person:{pid}:voices"

    @staticmethod
    def voiceprints(session: str) -> str:
        """HASH segment id -> float32 voice embedding of the other person's lines, until the
        conversation's encounter gives them to its person."""
        return f"{KEY_PREFIX}:session:{session}:voiceprints"

    @staticmethod
    def facts(pid: str) -> str:
        """HASH normalised fact -> JSON {text, kind, source, t}."""
        return f"{KEY_PREFIX}:person:{pid}:facts"

    @staticmethod
    def encounters(pid: str) -> str:
        """ZSET encounter id by end time."""
        return f"{KEY_PREFIX}:person:{pid}:encounters"

    @staticmethod
    def lineage(pid: str) -> str:
        """ZSET face id by time: the faces memory gave this person, which forget removes."""
        return f"{KEY_PREFIX}:person:{pid}:lineage"

    @staticmethod
    def encounter(eid: str) -> str:
        """HASH: the encounter's session, times, transcript, summary, topics and facts."""
        return f"{KEY_PREFIX}:encounter:{eid}"

    @staticmethod
    def frame_persons(frame_id: str) -> str:
        """HASH person -> face id: who each face of this frame was given (two faces are two people)."""
        return f"{KEY_PREFIX}:frame:{frame_id}:persons"

    @staticmethod
    def open_encounter(session: str) -> str:
        """HASH: the session's conversation in progress (id, times, segments, who was seen)."""
        return f"{KEY_PREFIX}:session:{session}:open"

    @staticmethod
    def closing(eid: str) -> str:
        """HASH: an ended conversation's state (with ``:segments`` and ``:faces``) until it is written."""
        return f"{KEY_PREFIX}:encounter:{eid}:closing"

    @staticmethod
    def view(session: str) -> str:
        """HASH person -> JSON {t, e, known}: who is in the session's view, with their evidence."""
        return f"{KEY_PREFIX}:session:{session}:view"

    @staticmethod
    def card(session: str) -> str:
        """HASH pid, t: whose card the session's overlay shows, and since when."""
        return f"{KEY_PREFIX}:session:{session}:card"

    @staticmethod
    def speakers(session: str) -> str:
        """HASH segment id -> JSON {speaker: me|them, score}: who said each segment, by voice."""
        return f"{KEY_PREFIX}:session:{session}:speakers"

    @staticmethod
    def voiced(session: str) -> str:
        """HASH person -> when their voice was last heard in the session (by the voice stage)."""
        return f"{KEY_PREFIX}:session:{session}:voiced"

    @staticmethod
    def heard_with(session: str) -> str:
        """HASH ``<person> <slot>`` -> float32 voice embedding (a few slots per person): the other
        side's voice heard while this person's face was the only one in the session's view. In a
        group it tells whose face speaks, a stranger's too."""
        return f"{KEY_PREFIX}:session:{session}:heard-with"

    @staticmethod
    def speaking(session: str) -> str:
        """STRING: when the utterance capture is still cutting began (wall clock); set while
        the session's speech goes on, deleted once its segment is written. Its TTL covers a
        capture that died mid-utterance. Memory ends no conversation of the session meanwhile."""
        return f"{KEY_PREFIX}:session:{session}:speaking"

    @staticmethod
    def maybe(session: str) -> str:
        """HASH person -> JSON ``{t, face}``: when a face in the session's view last scored
        borderline against them (within ``named_slack`` of the threshold), and the person that
        face was given meanwhile (``""`` if none). Their name may well be said."""
        return f"{KEY_PREFIX}:session:{session}:maybe"

    @staticmethod
    def context(session: str) -> str:
        """STRING, a JSON list: words the session's speech is likely to hold now (the names, companies
        and topics of the people in view), which the transcriber gives Whisper as hotwords."""
        return f"{KEY_PREFIX}:session:{session}:context"

    @staticmethod
    def heard(session: str) -> str:
        """LIST of the session's last lines (JSON t, text), for the names said in them."""
        return f"{KEY_PREFIX}:session:{session}:heard"

    @staticmethod
    def frame_faces(frame_id: str) -> str:
        """SET of the frame's face ids memory has handled, to decide its card once all are in."""
        return f"{KEY_PREFIX}:frame:{frame_id}:faces"

    @staticmethod
    def session_lock(session: str) -> str:
        return f"{KEY_PREFIX}:lock:session:{session}"

    @staticmethod
    def sessions_of(pid: str) -> str:
        """SET of the sessions a candidate was seen in (two make them a person)."""
        return f"{KEY_PREFIX}:person:{pid}:sessions"


class TrainerKeys:
    """The adapter registry and the trainer's bookkeeping."""

    ADAPTERS = f"{KEY_PREFIX}:trainer:adapters"  # ZSET adapter version by version number
    JOB_LOCK = f"{KEY_PREFIX}:lock:trainer-job"  # held by the one training job that may run
    NEW_ROWS = f"{KEY_PREFIX}:trainer:new-rows"  # rows added since the last job started

    @staticmethod
    def adapter(version: int) -> str:
        """HASH: version, base_model, rows, persons, eval losses, path, t, forgotten."""
        return f"{KEY_PREFIX}:trainer:adapter:{version}"


class TranscriberKeys:
    """The transcriber's own state, shared by its replicas."""

    @staticmethod
    def live(segment_id: str) -> str:
        """STRING (JSON): an utterance's live words so far: the last partial's time and words, and
        the stable ones (``services/transcriber/live.py``)."""
        return f"{KEY_PREFIX}:live:{segment_id}"


ADMIN_TOKEN_KEY = f"{KEY_PREFIX}:overlay:admin-token"
"""The overlay's admin bearer token when none is configured: made on first start, shared by replicas."""
