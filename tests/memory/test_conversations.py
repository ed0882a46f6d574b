"""Faults around conversations: arrival order, speech in flight, half-made steps, corrections mid-way,
and one conversation that cannot be written."""

import time

import numpy as np
import pytest
import redis

from services.memory.extract import Extraction, RulesExtractor
from services.memory.handler import MemoryHandler
from services.memory.settings import MemorySettings
from services.scribe.handler import Scribe
from shared.publisher import Publisher
from shared.schemas import EncounterMessage, FaceMessage, embedding_to_bytes
from shared.streams import Groups, MemoryKeys
from tests.memory.test_memory_service import line, run


def face(session: str, frame_id: str, vector: np.ndarray, t: float) -> FaceMessage:
    return FaceMessage(
        face_id=f"{frame_id}:0", frame_id=frame_id, session=session, t=t, bbox=[0, 0, 100, 100],
        det_score=0.9, embedding=embedding_to_bytes(vector),
    )  # fmt: skip


def encounters(r: redis.Redis) -> list[EncounterMessage]:
    return [EncounterMessage.from_fields(f) for _, f in r.xrange("encounters")]


def settle(
    r: redis.Redis,
    settings: MemorySettings,
    handler: MemoryHandler,
    rounds: int = 3,
    scribe: Scribe | None = None,
) -> None:
    """Run memory and the scribe until the conversations that are over are written (the gap is 1 s)."""
    scribe = scribe or Scribe(r, settings)
    for _ in range(rounds):
        run(r, settings, handler, scribe)
        time.sleep(1.1)
    run(r, settings, handler, scribe)


def test_out_of_order_transcripts(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """Two conversations in one session; the second's first line is transcribed before the first's
    last one, which a slow replica still holds."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s")
    t = time.time() - 60
    # capture wrote the audio of both conversations, in speech order; replica 1 holds a2
    r.xgroup_create("audio:segments", Groups.TRANSCRIBER, id="0", mkstream=True)
    for sid in ("s-a1", "s-a2", "s-b1"):
        r.xadd("audio:segments", {"segment_id": sid})
    [a1, a2] = r.xreadgroup(Groups.TRANSCRIBER, "replica-1", {"audio:segments": ">"}, count=2)[0][1]
    [b1] = r.xreadgroup(Groups.TRANSCRIBER, "replica-2", {"audio:segments": ">"})[0][1]
    r.xack("audio:segments", Groups.TRANSCRIBER, a1[0], b1[0])  # their transcripts are out
    r.xadd("faces", face("s", "f1", embeddings["t1-0"], t).to_fields())
    r.xadd("transcripts", line("s", 1, "Hi, I'm Maya Patel.", t).to_fields())  # a1: t .. t+2
    r.xadd("transcripts", line("s", 3, "Hello again, this is Tom.", t + 20).to_fields())  # b1, 17 s later
    r.xadd("faces", face("s", "f2", embeddings["t1-1"], t + 20).to_fields())
    settle(r, memory_settings, handler)
    assert encounters(r) == [], "the first conversation waits for the segment a replica still holds"
    r.xadd("transcripts", line("s", 2, "I work at Figma.", t + 2.5).to_fields())  # a2 comes last
    r.xack("audio:segments", Groups.TRANSCRIBER, a2[0])
    settle(r, memory_settings, handler)
    first, second = sorted(encounters(r), key=lambda e: e.t_start)
    assert first.transcript == "Hi, I'm Maya Patel. I work at Figma."
    assert second.transcript == "Hello again, this is Tom."
    assert first.person_id != second.person_id and first.company == "Figma"


def test_conversation_waits_for_transcriber(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """The last words of a quiet-looking conversation are still waiting in audio:segments."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s")
    t = time.time() - 30
    r.xadd("faces", face("s", "f1", embeddings["t1-2"], t).to_fields())
    r.xadd("transcripts", line("s", 1, "Hi, I'm Lee Wong.", t).to_fields())
    r.xgroup_create("audio:segments", Groups.TRANSCRIBER, id="0", mkstream=True)
    r.xadd("audio:segments", {"segment_id": "s-a2"})  # not yet transcribed
    settle(r, memory_settings, handler)
    assert encounters(r) == []
    r.xadd("transcripts", line("s", 2, "I run a bakery in Lisbon.", t + 2.2).to_fields())
    r.xgroup_destroy("audio:segments", Groups.TRANSCRIBER)  # as if transcribed and acked
    settle(r, memory_settings, handler)
    [encounter] = encounters(r)
    assert encounter.transcript == "Hi, I'm Lee Wong. I run a bakery in Lisbon."


def test_conversation_waits_for_speech_still_being_cut(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """A long utterance capture has not cut yet is in no stream: its speaking mark holds the
    conversation open however quiet the streams look, until the segment is written."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s")
    t = time.time() - 30
    r.xadd("faces", face("s", "f1", embeddings["t1-2"], t).to_fields())
    r.xadd("transcripts", line("s", 1, "Hi, I'm Lee Wong.", t).to_fields())
    speech = Publisher(r, memory_settings)
    speech.speaking("s", t + 2.2, ttl_s=30)  # as capture marks it while the speech goes on
    settle(r, memory_settings, handler)
    assert encounters(r) == []
    r.xadd("transcripts", line("s", 2, "I run a bakery in Lisbon.", t + 2.2).to_fields())
    speech.speaking("s", None, ttl_s=30)
    settle(r, memory_settings, handler)
    [encounter] = encounters(r)
    assert encounter.transcript == "Hi, I'm Lee Wong. I run a bakery in Lisbon."


def test_open_is_atomic(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """Every write to a conversation's state is inside one script: a kill between two calls cannot
    leave half of it. A half-made state left by an older version does not wedge the session."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s", "old")
    r.hset(MemoryKeys.open_encounter("old"), "id", "e-old-1")  # an older version killed mid-open
    r.sadd(MemoryKeys.OPEN_SESSIONS, "old")
    t = time.time() - 30
    writes: list[dict] = []
    with r.monitor() as monitor:
        handler.on_transcript(line("s", 1, "Hi, I'm Lee Wong.", t))
        handler.on_face(face("s", "f1", embeddings["t1-2"], t))
        r.set("monitor-end", 1)
        for command in monitor.listen():
            if "monitor-end" in command["command"]:
                break
            if ":open" in command["command"] and not command["command"].startswith(("HGET", "EVAL")):
                writes.append(command)
    assert writes and all(c["client_type"] == "lua" for c in writes), writes
    handler.on_transcript(line("old", 1, "Hello there, I'm Sam.", t))
    handler.on_face(face("old", "f2", embeddings["t1-3"], t))
    settle(r, memory_settings, handler)
    assert {e.session for e in encounters(r)} == {"s", "old"}
    assert r.xlen("dlq") == 0


def test_merge_during_conversation(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    from services.memory.admin import PersonAdmin

    handler = MemoryHandler(r, memory_settings)
    admin = PersonAdmin(handler.store, memory_settings.streams, memory_settings.dataset)
    r.sadd(MemoryKeys.SESSIONS, "s", "other")
    keep = handler.store.identify(embeddings["astronaut"]).person_id
    t = time.time() - 30
    r.xadd("faces", face("s", "f1", embeddings["t1-4"], t).to_fields())  # a new person, for now
    r.xadd("transcripts", line("s", 1, "Hi, I'm Sarah Chen from Stripe.", t).to_fields())
    r.xadd("faces", face("other", "f2", embeddings["t1-5"], t).to_fields())
    r.xadd("transcripts", line("other", 1, "Hello, I'm Tom Berg.", t).to_fields())
    run(r, memory_settings, handler)
    [drop] = handler.store.repo.frame_claims("f1")
    admin.merge(keep, drop)  # the wearer says: that was Sarah, while the conversation is open
    settle(r, memory_settings, handler)
    by_session = {e.session: e for e in encounters(r)}
    assert by_session["s"].person_id == keep and "other" in by_session
    assert r.xlen("dlq") == 0


class BoomExtractor:
    """Fails on one conversation, as a broken adapter would."""

    def extract(self, transcript: str, wearer: str | None = None) -> Extraction:
        if "boom" in transcript:
            raise RuntimeError("adapter failed to load")
        return RulesExtractor().extract(transcript, wearer)


@pytest.mark.parametrize("sessions", [("a", "b", "c")])
def test_failing_extractor_isolated(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray], sessions: tuple
) -> None:
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, *sessions)
    t = time.time() - 30
    for i, session in enumerate(sessions):
        said = "boom goes the adapter" if session == "b" else f"Hi, I'm Person {'XYZ'[i]}yla."
        r.xadd("faces", face(session, f"f{i}", embeddings[f"t1-{i}"], t).to_fields())
        r.xadd("transcripts", line(session, 1, said, t).to_fields())
    settle(r, memory_settings, handler, scribe=Scribe(r, memory_settings, BoomExtractor()))
    assert sorted(e.session for e in encounters(r)) == ["a", "c"], "the others go on"
    [(_, letter)] = r.xrange("dlq")
    assert letter[b"stream"] == b"memory:conversations" and b"adapter failed" in letter[b"error"]
    assert b"boom goes the adapter" in letter[b"f.segments"], "the letter keeps its state"
    assert r.scard(MemoryKeys.CLOSING) == 0


def test_faces_wait_for_speech_still_being_transcribed(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """Faces come in a fraction of a second, speech only once it is transcribed: a session with
    faces and no transcript yet is not closed as silent while its audio waits."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s")
    t = time.time() - 30
    r.xgroup_create("audio:segments", Groups.TRANSCRIBER, id="0", mkstream=True)
    r.xadd("audio:segments", {"segment_id": "s-a1"})  # not yet transcribed
    r.xadd("faces", face("s", "f1", embeddings["t1-2"], t).to_fields())
    settle(r, memory_settings, handler)
    r.xadd("transcripts", line("s", 1, "Hi, I'm Lee Wong.", t).to_fields())
    r.xgroup_destroy("audio:segments", Groups.TRANSCRIBER)  # as if transcribed and acked
    settle(r, memory_settings, handler)
    [encounter] = encounters(r)
    assert handler.store.profile(encounter.person_id).name == "Lee Wong"
