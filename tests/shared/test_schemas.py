"""Every stream's model survives a trip through Redis, and bad entries are refused clearly."""

import re

import numpy as np
import pytest
import redis

from shared.schemas import (
    MESSAGE_TYPES,
    AdapterMessage,
    AudioSegmentMessage,
    BadMessageError,
    ConversationMessage,
    EncounterMessage,
    FaceMessage,
    FrameMessage,
    PartialSegmentMessage,
    PartialTranscriptMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
    VoiceMessage,
    embedding_to_bytes,
)


def unit_vector(seed: int, dim: int = 512) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


SAMPLES: list[StreamMessage] = [
    AudioSegmentMessage(
        segment_id="s1", session="day1", t_start=1.5, t_end=3.25, sample_rate=16000,
        audio=np.arange(-100, 100, dtype="<i2").tobytes(),
    ),
    FrameMessage(frame_id="f1", session="day1", t=2.0, width=640, height=480, image=b"\xff\xd8\x00\xff\xd9"),
    TranscriptMessage(
        segment_id="s1", session="day1", t_start=1.5, t_end=3.25, text="Hi, I'm Sarah — from Stripe.",
        language="en", confidence=0.93, model="tiny.en",
    ),
    FaceMessage(
        face_id="f1:0", frame_id="f1", session="day1", t=2.0, bbox=[1.0, 2.0, 30.5, 40.0], det_score=0.87,
        landmarks=[[1.0, 2.0]] * 5, embedding=embedding_to_bytes(unit_vector(0)), thumb=b"\xff\xd8",
    ),
    VoiceMessage(
        segment_id="s1", session="day1", t_start=1.5, t_end=3.25,
        embedding=embedding_to_bytes(unit_vector(1, dim=256)), speech_s=1.6, model="resemblyzer-ge2e",
    ),
    RecallMessage(
        recall_id="r1", person_id="p1", name="Sarah Chen", summary="Sarah from Stripe", similarity=0.8, t=3.0
    ),
    ConversationMessage(encounter_id="e-s1", session="day1", t_start=1.0, t_end=9.0, segments=4),
    EncounterMessage(
        encounter_id="e1", session="day1", person_id="p1", t_start=1.0, t_end=9.0, transcript="Hi.",
        summary="Met Sarah.", facts=[{"text": "works at Stripe", "source": "e1"}], name="Sarah Chen",
        topics=["rate limits"], backend="rules",
    ),
    AdapterMessage(
        version=3, base_model="SmolLM2-135M-Instruct", path="/data/adapters/v3", rows=120,
        eval_loss_before=2.5, eval_loss_after=1.75, t=10.0,
    ),
    PartialSegmentMessage(
        partial_id="s1-p1", segment_id="s1", session="day1", t_start=1.5, t_end=2.5, sample_rate=16000,
        audio=np.arange(-100, 100, dtype="<i2").tobytes(),
    ),
    PartialTranscriptMessage(
        partial_id="s1-p1", segment_id="s1", session="day1", t_start=1.5, t_end=2.5, stable="Hi,",
        pending="I'm Sar", model="tiny.en",
    ),
]  # fmt: skip


def test_every_stream_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_redis(r: redis.Redis, msg: StreamMessage) -> None:
    r.xadd("roundtrip", msg.to_fields())
    [(_, fields)] = r.xrange("roundtrip")
    assert type(msg).from_fields(fields) == msg
    # Numbers and text stay readable for redis-cli; binary fields stay raw bytes.
    assert fields[b"v"] == b"1"
    for name, value in fields.items():
        if not isinstance(getattr(msg, name.decode()), bytes):
            value.decode("utf-8")


def test_embedding_helpers_refuse_unusable_vectors() -> None:
    good = FaceMessage.model_validate({**SAMPLES[3].model_dump()})
    assert np.allclose(good.vector(), unit_vector(0))
    for bad, why in [
        (embedding_to_bytes(unit_vector(0)[:128]), "expected 512"),
        (embedding_to_bytes(np.full(512, np.nan)), "NaN"),
        (embedding_to_bytes(np.zeros(512)), "not normed"),
    ]:
        with pytest.raises(BadMessageError, match=why):
            good.model_copy(update={"embedding": bad}).vector()


def transcript_fields() -> dict[bytes, bytes]:
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in SAMPLES[2].to_fields().items()}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda f: f.pop(b"text"), "text: Field required"),
        (
            lambda f: f.update({b"confidence": b"high"}),
            "confidence: Input should be a valid number",
        ),
        (lambda f: f.update({b"v": b"2"}), "unknown schema version v=b'2'"),
        (lambda f: f.pop(b"v"), "missing schema version"),
        (lambda f: f.update({b"text": b"x" * 2000}), "over the limit of 1000"),
        (lambda f: f.update({b"text": b"\xff\xfe"}), "text: Input should be a valid string, unable to parse"),
        (lambda f: f.update({b"segment_id": b"../../etc"}), "segment_id: String should match"),
        (lambda f: f.update({b"extra": b"1"}), "extra: Extra inputs are not permitted"),
    ],
    ids=[
        "missing",
        "wrong-type",
        "unknown-v",
        "no-v",
        "oversized",
        "not-utf8",
        "bad-id",
        "unknown-field",
    ],
)
def test_bad_entries_are_refused_with_a_clear_error(change, error: str) -> None:  # type: ignore[no-untyped-def]
    fields = transcript_fields()
    change(fields)
    with pytest.raises(BadMessageError, match=re.escape(error)):
        TranscriptMessage.from_fields(fields, max_field_bytes=1000)


@pytest.mark.parametrize("bbox", [b"[1,2,\xff]", b"[1,2,", b"not json"])
def test_an_unreadable_list_field_is_refused_by_name(bbox: bytes) -> None:
    face = next(m for m in SAMPLES if isinstance(m, FaceMessage))
    fields = {k.encode(): v.encode() if isinstance(v, str) else v for k, v in face.to_fields().items()}
    fields[b"bbox"] = bbox
    with pytest.raises(BadMessageError, match="FaceMessage: field 'bbox' is unreadable"):
        FaceMessage.from_fields(fields)
