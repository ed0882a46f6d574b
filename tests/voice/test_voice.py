"""The voice stage on real recorded speech with resemblyzer's real GE2E encoder and real Redis."""

import itertools

import numpy as np
import redis

from services.voice.handler import VoiceHandler
from services.voice.model import VoiceEncoderModel
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, VoiceMessage
from shared.settings import ServiceSettings

RATE = 16_000


def segment(audio: np.ndarray, sid: str, session: str = "s") -> AudioSegmentMessage:
    return AudioSegmentMessage(
        segment_id=sid, session=session, t_start=100.0, t_end=100.0 + len(audio) / RATE,
        sample_rate=RATE, audio=(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes(),
    )  # fmt: skip


def test_each_utterance_is_nearest_to_its_own_speaker(
    voice_model: VoiceEncoderModel, readers: dict[str, list[tuple[np.ndarray, str]]]
) -> None:
    """Leave one out: every recorded sentence's nearest other sentence is by the same reader."""
    labelled = [(who, voice_model.embed(audio)[0]) for who, lines in readers.items() for audio, _ in lines]
    assert len(labelled) == 10 and all(v.shape == (256,) for _, v in labelled)
    for i, (who, vector) in enumerate(labelled):
        scores = [(float(vector @ other), them) for j, (them, other) in enumerate(labelled) if j != i]
        assert max(scores)[1] == who, (who, sorted(scores)[-3:])
    same = [float(a @ b) for (p, a), (q, b) in itertools.combinations(labelled, 2) if p == q]
    other = [float(a @ b) for (p, a), (q, b) in itertools.combinations(labelled, 2) if p != q]
    assert np.mean(same) > np.mean(other) + 0.1


def test_the_stage_writes_one_embedding_per_segment(
    r: redis.Redis, settings: ServiceSettings, voice_model: VoiceEncoderModel,
    readers: dict[str, list[tuple[np.ndarray, str]]],
) -> None:  # fmt: skip
    lines = [audio for audio, _ in readers["cards-reader"]]
    for i, audio in enumerate(lines):
        r.xadd("audio:segments", segment(audio, f"seg-{i}").to_fields())
    handler = VoiceHandler(voice_model.settings, voice_model)
    stats = Consumer(r, settings, "voice", {AudioSegmentMessage: handler}).run(burst=True)
    assert stats.processed == len(lines) and stats.dead_lettered == 0
    voices = [VoiceMessage.from_fields(f) for _, f in r.xrange("voices")]
    assert [v.segment_id for v in voices] == [f"seg-{i}" for i in range(len(lines))]
    for voice, audio in zip(voices, lines, strict=True):
        assert voice.vector().shape == (256,) and voice.model == "resemblyzer-ge2e"
        assert 0.3 < voice.speech_s <= len(audio) / RATE + 0.01
    assert float(voices[0].vector() @ voices[1].vector()) > 0.6, "one reader: alike"


def test_bad_segments_go_to_dlq_and_good_ones_still_flow(
    r: redis.Redis, settings: ServiceSettings, voice_model: VoiceEncoderModel,
    readers: dict[str, list[tuple[np.ndarray, str]]],
) -> None:  # fmt: skip
    good = segment(readers["librivox-reader"][1][0], "good")
    changes = {
        "empty": ({"audio": b""}, "audio is empty"),
        "rate": ({"sample_rate": 44100}, "expected 16000 Hz"),
        "truncated": ({"audio": good.audio[:-1]}, "whole s16le"),
        "long": ({"audio": bytes(RATE * 31 * 2)}, "over the 30.0 s limit"),
        "silence": ({"audio": bytes(RATE * 2 * 2)}, "no voice to embed"),
        "backwards": ({"t_end": 99.0}, "is before t_start"),
    }
    bad = {name: (good.model_copy(update={"segment_id": name, **c}), e) for name, (c, e) in changes.items()}
    r.xadd("audio:segments", good.to_fields())
    for msg, _ in bad.values():
        r.xadd("audio:segments", msg.to_fields())
    r.xadd("audio:segments", {"v": "9", "segment_id": "future"})  # an unknown schema version
    handler = VoiceHandler(voice_model.settings, voice_model)
    stats = Consumer(r, settings, "voice", {AudioSegmentMessage: handler}).run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (1, len(bad) + 1)
    letters = {f[b"f.segment_id"].decode(): f[b"error"].decode() for _, f in r.xrange("dlq")}
    for name, (_, error) in bad.items():
        assert error in letters[name], (name, letters[name])
    assert "future" in letters
    [(_, fields)] = r.xrange("voices")
    assert VoiceMessage.from_fields(fields).segment_id == "good"
