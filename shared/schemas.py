"""One pydantic model per stream entry, and the flat Redis encoding they share.

An entry is a flat Redis hash: text and numbers as readable strings, lists and dicts as
JSON text, and only the fields typed ``bytes`` (audio, JPEG, embeddings) as raw bytes.
That keeps ``redis-cli XRANGE`` useful without base64 on the large fields.
"""

import json
import time
from typing import Annotated, Any, ClassVar, Self, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Text = Annotated[str, Field(max_length=100_000)]
Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]

EMBEDDING_DIM = 512
VOICE_DIM = 256


class BadMessageError(ValueError):
    """An entry that can never be handled: it goes to the dead-letter stream at once."""


def _is_bytes(annotation: Any) -> bool:
    if annotation is bytes:
        return True
    return get_origin(annotation) is Annotated and get_args(annotation)[0] is bytes


def _is_json(annotation: Any) -> bool:
    base = get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation
    return get_origin(base) in (list, dict) or base in (list, dict)


class StreamMessage(BaseModel):
    """Base of every stream entry.

    Subclasses set ``STREAM`` (the attribute of :class:`shared.streams.StreamNames` that
    names their stream) and ``KEY`` (the field that is the entry's own stable id).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    STREAM: ClassVar[str]
    KEY: ClassVar[str]
    VERSION: ClassVar[int] = 1

    v: int = 1

    @classmethod
    def field_kinds(cls) -> dict[str, str]:
        """Each field's encoding: ``bytes`` (raw), ``json`` (lists, dicts) or ``text``."""
        kinds = cls.__dict__.get("_field_kinds")
        if kinds is None:
            kinds = {
                name: "bytes"
                if _is_bytes(info.annotation)
                else "json"
                if _is_json(info.annotation)
                else "text"
                for name, info in cls.model_fields.items()
            }
            type.__setattr__(cls, "_field_kinds", kinds)
        return kinds

    @classmethod
    def json_fields(cls) -> tuple[str, ...]:
        """The fields encoded as JSON text."""
        names = cls.__dict__.get("_json_fields")
        if names is None:
            names = tuple(name for name, kind in cls.field_kinds().items() if kind == "json")
            type.__setattr__(cls, "_json_fields", names)
        return names

    @property
    def key(self) -> str:
        """The stable id that makes a redelivered entry recognisable."""
        return str(getattr(self, self.KEY))

    def to_fields(self) -> dict[str, bytes | str]:
        """Flatten to Redis fields."""
        fields: dict[str, bytes | str] = {}
        values = self.__dict__
        for name, kind in self.field_kinds().items():
            value = values[name]
            if kind == "bytes":
                fields[name] = value
            elif kind == "json":
                fields[name] = (
                    json.dumps(value, separators=(",", ":")) if value else "[]" if value == [] else "{}"
                )
            else:
                fields[name] = repr(value) if isinstance(value, float) else str(value)
        return fields

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes], max_field_bytes: int = 8 << 20) -> Self:
        """Parse an entry read from Redis; any problem raises :class:`BadMessageError`."""
        raw: dict[str, Any] = {k.decode("utf-8", "replace"): val for k, val in fields.items()}
        version = raw.get("v")
        if version is None:
            raise BadMessageError(f"{cls.__name__}: missing schema version field 'v'")
        if version != str(cls.VERSION).encode():
            raise BadMessageError(
                f"{cls.__name__}: unknown schema version v={version[:20]!r}, "
                f"this reader knows v={cls.VERSION}"
            )
        oversized = next((name for name, value in raw.items() if len(value) > max_field_bytes), None)
        if oversized is not None:
            raise BadMessageError(
                f"{cls.__name__}: field {oversized!r} is {len(raw[oversized])} bytes, "
                f"over the limit of {max_field_bytes}"
            )
        # Text and numbers go to pydantic as the bytes read: it decodes UTF-8 and parses numbers
        # itself, faster than a decode here (bench/bus.py), and names a field that is not UTF-8.
        for name in cls.json_fields():
            if name not in raw:
                continue
            try:
                raw[name] = json.loads(raw[name].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadMessageError(f"{cls.__name__}: field {name!r} is unreadable: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors())
            raise BadMessageError(f"{cls.__name__}: {problems}") from None


def now() -> float:
    """Wall-clock seconds since the epoch: the clock every ``t`` field uses."""
    return time.time()


class AudioSegmentMessage(StreamMessage):
    """One VAD speech segment, PCM s16le mono."""

    STREAM = "audio_segments"
    KEY = "segment_id"

    segment_id: Id
    session: Id
    t_start: float
    t_end: float
    sample_rate: Annotated[int, Field(gt=0, le=192_000)]
    audio: bytes


class PartialSegmentMessage(AudioSegmentMessage):
    """An utterance still going on, as far as it has been heard: decoded for live words only.

    ``segment_id`` is the segment the utterance will be written as; ``partial_id`` is
    ``<segment_id>-p<n>``. Partials go to no conversation, transcript count or training row,
    and are the first thing dropped under load (capture skips them while speech waits, and
    their stream is capped on write).
    """

    STREAM = "audio_partials"
    KEY = "partial_id"

    partial_id: Id


class FrameMessage(StreamMessage):
    """One camera frame taken during speech, as JPEG."""

    STREAM = "frames"
    KEY = "frame_id"

    frame_id: Id
    session: Id
    t: float
    width: Annotated[int, Field(gt=0, le=16_384)]
    height: Annotated[int, Field(gt=0, le=16_384)]
    image: bytes


class TranscriptMessage(StreamMessage):
    """The text of one speech segment."""

    STREAM = "transcripts"
    KEY = "segment_id"

    segment_id: Id
    session: Id
    t_start: float
    t_end: float
    text: Text
    language: Annotated[str, Field(max_length=16)]
    confidence: Annotated[float, Field(ge=0.0, le=1.0)]
    model: Annotated[str, Field(max_length=200)]


class PartialTranscriptMessage(StreamMessage):
    """Live words of an utterance still going on. ``stable`` words were the same in two decodes
    in a row and do not change any more; ``pending`` ones may. The segment's transcript
    replaces them."""

    STREAM = "partial_transcripts"
    KEY = "partial_id"

    partial_id: Id
    segment_id: Id
    session: Id
    t_start: float
    t_end: float
    stable: Text = ""
    pending: Text = ""
    model: Annotated[str, Field(max_length=200)]


class FaceMessage(StreamMessage):
    """One detected face: box, landmarks, a normed float32 embedding and a thumbnail."""

    STREAM = "faces"
    KEY = "face_id"

    face_id: Id
    frame_id: Id
    session: Id
    t: float
    bbox: Annotated[list[float], Field(min_length=4, max_length=4)]
    det_score: Annotated[float, Field(ge=0.0, le=1.0)]
    landmarks: Annotated[list[list[float]], Field(max_length=106)] = Field(default_factory=list)
    embedding: bytes
    thumb: bytes = b""
    faces_in_frame: Annotated[int, Field(ge=0, le=1000)] = 0
    """How many faces of its frame the face stage passed on; 0 when unknown."""
    width: Annotated[int, Field(ge=0, le=20_000)] = 0
    """Size of the frame the face is in, for where and how large it is in view; 0 when unknown."""
    height: Annotated[int, Field(ge=0, le=20_000)] = 0

    def vector(self) -> np.ndarray:
        """The embedding as a float32 array; raises :class:`BadMessageError` if it is unusable."""
        return embedding_from_bytes(self.embedding)


class VoiceMessage(StreamMessage):
    """Who is speaking in one speech segment: a normed float32 speaker embedding (GE2E, 256-d)."""

    STREAM = "voices"
    KEY = "segment_id"

    segment_id: Id
    session: Id
    t_start: float
    t_end: float
    embedding: bytes
    speech_s: Annotated[float, Field(ge=0.0, le=3600.0)]
    """Seconds of voiced audio the embedding was taken from (short ones are less sure)."""
    model: Annotated[str, Field(max_length=200)]

    def vector(self) -> np.ndarray:
        """The embedding as a float32 array; raises :class:`BadMessageError` if it is unusable."""
        return embedding_from_bytes(self.embedding, VOICE_DIM)


class RecallMessage(StreamMessage):
    """Who is in front of the wearer now: one card for the overlay."""

    STREAM = "recalls"
    KEY = "recall_id"

    recall_id: Id
    person_id: Id
    name: Annotated[str, Field(max_length=200)]
    summary: Text
    similarity: float
    t: float
    company: Annotated[str, Field(max_length=200)] = ""
    role: Annotated[str, Field(max_length=200)] = ""
    last_met: float = 0.0
    """End of the last conversation with them, epoch seconds; 0 when this is the first."""
    place: Annotated[str, Field(max_length=200)] = ""
    topics: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    open_threads: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    backend: Annotated[str, Field(max_length=50)] = ""
    """Which extraction backend wrote the summary it draws on: rules, anthropic or local."""
    thumb: bytes = b""
    others: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    """Names of the other people the wearer knows who are in view too."""
    strangers: Annotated[int, Field(ge=0)] = 0
    """How many other people in view the wearer does not know (one line on the card, not a card each)."""
    stay_s: Annotated[float, Field(ge=0)] = 0.0
    """The card stays this long after it arrives unless another renews it; 0: until replaced."""
    note: Annotated[str, Field(max_length=200)] = ""
    """Why the card is news, e.g. "introduced just now"."""


class ConversationMessage(StreamMessage):
    """A conversation memory has ended, for the scribe to write down as an encounter.

    Its segments and sightings wait in Redis under the encounter id until the encounter is
    written (``services/memory/conversations.py``); the entry is only the hand-over.
    """

    STREAM = "conversations"
    KEY = "encounter_id"

    encounter_id: Id
    session: Id
    t_start: float
    t_end: float
    segments: Annotated[int, Field(ge=0)]


class EncounterMessage(StreamMessage):
    """One finished conversation with one person."""

    STREAM = "encounters"
    KEY = "encounter_id"

    encounter_id: Id
    session: Id
    person_id: Id
    t_start: float
    t_end: float
    transcript: Text
    summary: Text
    facts: list[dict[str, Any]] = Field(default_factory=list)
    name: Annotated[str, Field(max_length=200)] = ""
    company: Annotated[str, Field(max_length=200)] = ""
    role: Annotated[str, Field(max_length=200)] = ""
    place: Annotated[str, Field(max_length=200)] = ""
    topics: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    open_threads: Annotated[list[str], Field(max_length=20)] = Field(default_factory=list)
    backend: Annotated[str, Field(max_length=50)] = ""
    """Which extraction backend read the conversation: rules, anthropic or local."""
    lines: Annotated[list[dict[str, str]], Field(max_length=10_000)] = Field(default_factory=list)
    """Each segment in order: ``segment_id``, ``speaker`` (``me``: the wearer's enrolled voice,
    ``them``: another voice, ``""``: no voice known) and ``text``."""


class AdapterMessage(StreamMessage):
    """A trained adapter, announced so that the scribe's ``local`` backend loads it."""

    STREAM = "trainer_runs"
    KEY = "version"

    version: Annotated[int, Field(ge=1)]
    base_model: Annotated[str, Field(max_length=500)]
    path: Annotated[str, Field(max_length=4000)]
    rows: Annotated[int, Field(ge=0)]
    eval_loss_before: float
    eval_loss_after: float
    t: float


MESSAGE_TYPES: dict[str, type[StreamMessage]] = {
    m.STREAM: m
    for m in (
        AudioSegmentMessage,
        PartialSegmentMessage,
        FrameMessage,
        TranscriptMessage,
        PartialTranscriptMessage,
        FaceMessage,
        VoiceMessage,
        RecallMessage,
        ConversationMessage,
        EncounterMessage,
        AdapterMessage,
    )
}
"""Message model by the ``StreamNames`` attribute of its stream."""


def embedding_to_bytes(vector: np.ndarray) -> bytes:
    """Encode an embedding as float32 little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def embedding_from_bytes(data: bytes, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """Decode and check an embedding: right size, finite, unit norm."""
    if len(data) != dim * 4:
        raise BadMessageError(f"embedding is {len(data)} bytes, expected {dim} float32 ({dim * 4})")
    vector = np.frombuffer(data, dtype="<f4")
    if not np.all(np.isfinite(vector)):
        raise BadMessageError("embedding holds NaN or infinity")
    norm = float(np.linalg.norm(vector))
    if not 0.99 < norm < 1.01:
        raise BadMessageError(f"embedding is not normed (norm {norm:.3f})")
    return vector


def dead_letter(
    stream: str, entry_id: str, error: str, fields: dict[bytes, bytes] | dict[str, bytes | str], **meta: str
) -> dict[str, bytes | str]:
    """A ``dlq`` entry: where it came from, why it failed, and the original fields under ``f.``."""
    letter: dict[str, bytes | str] = {
        "v": "1", "stream": stream, "id": entry_id, "error": error[:2000], "t": repr(now()), **meta
    }  # fmt: skip
    for key, value in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        letter["f." + name] = value  # prefixed so that no field of theirs can shadow ours
    return letter
