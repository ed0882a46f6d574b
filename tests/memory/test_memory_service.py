"""The memory stage on real Redis: faces and transcripts in, recall cards and encounters out."""

import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import redis

from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.memory.handler import MemoryHandler
from services.memory.settings import MemorySettings
from services.scribe.handler import Scribe
from shared.consumer import Consumer
from shared.schemas import (
    ConversationMessage,
    EncounterMessage,
    FaceMessage,
    RecallMessage,
    TranscriptMessage,
    embedding_to_bytes,
)
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys
from tests.face.conftest import frame, photo

REPO = Path(__file__).parents[2]


def faces_of(
    face_pack: FacePackModel, image: np.ndarray, session: str, frame_id: str, t: float
) -> list[FaceMessage]:
    msg = frame(image, frame_id).model_copy(update={"session": session, "t": t})
    return FaceHandler(face_pack.settings, face_pack)(msg)


def line(session: str, i: int, text: str, t: float) -> TranscriptMessage:
    return TranscriptMessage(
        segment_id=f"{session}-a{i}", session=session, t_start=t, t_end=t + 2, text=text,
        language="en", confidence=0.9, model="tiny.en",
    )  # fmt: skip


def scribe_loop(r: redis.Redis, settings: MemorySettings, scribe: Scribe) -> Consumer:
    return Consumer(
        r, settings, "scribe", {ConversationMessage: scribe}, ticker=scribe, committed=scribe.committed
    )


def run(  # type: ignore[no-untyped-def]
    r: redis.Redis, settings: MemorySettings, handler: MemoryHandler, scribe: Scribe | None = None
):
    """Memory until it is drained, then the scribe: the conversations memory ended are written."""
    consumer = Consumer(r, settings, "memory", handler.handlers, ticker=handler)
    stats = consumer.run(burst=True)
    scribe_loop(r, settings, scribe or Scribe(r, settings)).run(burst=True)
    return stats


def test_meeting_then_recall_on_the_next_sighting(
    r: redis.Redis, memory_settings: MemorySettings, face_pack: FacePackModel
) -> None:
    handler = MemoryHandler(r, memory_settings)
    now = time.time()
    r.sadd(MemoryKeys.SESSIONS, "day1", "day4")
    lines = ["Hi there, I'm Alex.", "Hi Alex, I'm Sarah Chen from Stripe.", "I work on rate limits."]
    for i, text in enumerate(lines):
        r.xadd("transcripts", line("day1", i, text, now - 20 + 0.5 * i).to_fields())
    for face in faces_of(face_pack, photo("astronaut"), "day1", "day1-f1", now - 19):
        r.xadd("faces", face.to_fields())
    run(r, memory_settings, handler)
    first, introduced = (RecallMessage.from_fields(f) for _, f in r.xrange("recalls"))
    assert first.name == "Unknown person"
    assert (introduced.name, introduced.note) == ("Sarah Chen", "introduced just now")
    time.sleep(1.1)  # quiet for longer than the gap
    run(r, memory_settings, handler)  # the tick closes the quiet conversation
    [(_, fields)] = r.xrange("encounters")
    encounter = EncounterMessage.from_fields(fields)
    assert "Sarah Chen from Stripe" in encounter.summary and encounter.session == "day1"
    assert {"text": "works at Stripe", "kind": "fact", "source": encounter.encounter_id} in encounter.facts

    for face in faces_of(face_pack, cv2.flip(photo("astronaut"), 1), "day4", "day4-f1", now):
        r.xadd("faces", face.to_fields())
    run(r, memory_settings, handler)
    card = RecallMessage.from_fields(r.xrange("recalls")[-1][1])
    assert card.person_id == encounter.person_id and card.name == "Sarah Chen"
    assert card.summary.startswith("Sarah Chen from Stripe — last met")
    assert "talked about rate limits" in card.summary


def test_bad_entries_go_to_dlq_and_the_service_goes_on(
    r: redis.Redis, memory_settings: MemorySettings, face_pack: FacePackModel
) -> None:
    r.sadd(MemoryKeys.SESSIONS, "s1")
    [good] = faces_of(face_pack, photo("astronaut"), "s1", "s1-f1", time.time())
    bad = {
        "wrong-dim": good.model_copy(update={"face_id": "wrong-dim", "embedding": good.embedding[:512]}),
        "nan": good.model_copy(
            update={"face_id": "nan", "embedding": embedding_to_bytes(np.full(512, np.nan))}
        ),
        "zero": good.model_copy(update={"face_id": "zero", "embedding": embedding_to_bytes(np.zeros(512))}),
        "stranger": good.model_copy(update={"face_id": "stranger", "session": "never-announced"}),
    }
    for msg in bad.values():
        r.xadd("faces", msg.to_fields())
    r.xadd("faces", good.to_fields())
    r.xadd("transcripts", line("s1", 0, "   ", time.time()).to_fields())
    stats = run(r, memory_settings, MemoryHandler(r, memory_settings))
    assert (stats.processed, stats.dead_lettered) == (1, 5)
    errors = {
        f[b"f.face_id"].decode() if b"f.face_id" in f else "empty": f[b"error"].decode()
        for _, f in r.xrange("dlq")
    }
    assert "expected 512" in errors["wrong-dim"] and "NaN" in errors["nan"] and "not normed" in errors["zero"]
    assert "unknown session 'never-announced'" in errors["stranger"] and "empty transcript" in errors["empty"]
    assert r.xlen("recalls") == 1


def test_two_replicas_seeing_one_new_face_create_one_person(
    r: redis.Redis, settings: ServiceSettings, embeddings: dict[str, np.ndarray], tmp_path: Path
) -> None:
    np.save(tmp_path / "face.npy", embeddings["astronaut"])
    start_at = time.time() + 3
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("identify_worker.py")),
                settings.redis_url,
                str(tmp_path / "face.npy"),
                str(start_at),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(r.smembers(MemoryKeys.PERSONS)) == 1
    assert answers[0] == answers[1] == r.smembers(MemoryKeys.PERSONS).pop().decode()


def sarah_said_hi(
    r: redis.Redis, settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> tuple[MemoryHandler, float]:
    """Memory, having seen Sarah's face in session s1 20 s ago and heard her introduce herself."""
    handler = MemoryHandler(r, settings)
    now = time.time()
    r.sadd(MemoryKeys.SESSIONS, "s1")
    handler.on_face(
        FaceMessage(
            face_id="s1-f1-0", frame_id="s1-f1", session="s1", t=now - 20, bbox=(0, 0, 100, 100),
            det_score=0.9, embedding=embedding_to_bytes(embeddings["astronaut"]), thumb=b"",
        )
    )  # fmt: skip
    handler.on_transcript(line("s1", 0, "Hi, I'm Sarah Chen from Stripe.", now - 20))
    return handler, now


def test_a_replica_killed_between_ending_and_writing_an_encounter_loses_nothing(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    handler, _ = sarah_said_hi(r, memory_settings, embeddings)
    time.sleep(1.1)
    assert handler.tick() == [], "memory ends it and hands it over"
    [(_, fields)] = r.xrange("conversations")
    handover = ConversationMessage.from_fields(fields)
    [first] = Scribe(r, memory_settings)(handover)  # built, then the scribe dies before the commit
    assert r.smembers(MemoryKeys.CLOSING) == {first.encounter_id.encode()}, "its state is still there"
    scribe_loop(r, memory_settings, Scribe(r, memory_settings)).run(burst=True)  # another replica writes it
    [(_, fields)] = r.xrange("encounters")
    assert EncounterMessage.from_fields(fields).encounter_id == first.encounter_id == handover.encounter_id
    assert r.hget(MemoryKeys.person(first.person_id), "encounters") == b"1", "recorded once"
    assert not r.smembers(MemoryKeys.CLOSING) and not r.keys("*:closing*"), "and then cleaned up"


def test_a_scribe_killed_after_writing_leaves_nothing_behind(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """The encounter is in the stream but the scribe died before clearing its state: the next
    scribe's tick clears it, and writes nothing twice."""
    handler, _ = sarah_said_hi(r, memory_settings, embeddings)
    time.sleep(1.1)
    handler.tick()
    loop = scribe_loop(r, memory_settings, Scribe(r, memory_settings))
    loop.committed = None  # killed between the write and clearing the state
    loop.run(burst=True)
    assert r.xlen("encounters") == 1 and r.scard(MemoryKeys.CLOSING) == 1
    scribe_loop(r, memory_settings, Scribe(r, memory_settings)).run(burst=True)
    assert r.xlen("encounters") == 1 and r.scard(MemoryKeys.CLOSING) == 0 and not r.keys("*:closing*")


def test_a_conversation_is_not_ended_while_memory_still_has_older_entries_waiting(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    handler, now = sarah_said_hi(r, memory_settings, embeddings)
    # A transcript of the same talk, written 10 s ago, still waits (its replica stalled, say).
    r.xgroup_create("transcripts", "memory", id="0", mkstream=True)
    waiting = line("s1", 1, "I work on rate limits.", now - 18)
    r.xadd("transcripts", waiting.to_fields(), id=f"{int((now - 10) * 1000)}-0")
    time.sleep(1.1)  # quiet for longer than the gap, as far as what memory handled says
    handler.tick()
    assert r.smembers(MemoryKeys.OPEN_SESSIONS) == {b"s1"} and not r.exists("conversations"), "not ended yet"
    run(r, memory_settings, handler)  # the waiting transcript is handled; then the tick ends it
    time.sleep(1.1)
    run(r, memory_settings, handler)
    [(_, fields)] = r.xrange("encounters")
    assert "I work on rate limits." in EncounterMessage.from_fields(fields).transcript
