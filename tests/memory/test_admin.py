"""Person admin on real Redis: rename, merge, not-this-person, and forget everywhere."""

import time

import numpy as np
import pytest
import redis

from services.face.model import FacePackModel
from services.memory.admin import PersonAdmin
from services.memory.handler import MemoryHandler
from services.memory.person_store import PersonStore
from services.memory.settings import MemorySettings
from shared.schemas import AudioSegmentMessage, FaceMessage, FrameMessage, embedding_to_bytes
from shared.streams import MemoryKeys, StreamNames
from tests.face.conftest import frame, photo
from tests.memory.test_memory_service import faces_of, line, run

DIM_BYTES = 512 * 4


@pytest.fixture
def admin(store: PersonStore) -> PersonAdmin:
    return PersonAdmin(store, StreamNames())


def test_rename_merge_and_not_this_person(admin: PersonAdmin, embeddings: dict[str, np.ndarray]) -> None:
    store = admin.store
    a = store.identify(embeddings["t1-0"]).person_id
    b = store.identify(embeddings["t1-1"]).person_id
    assert a and b
    admin.rename(a, "Maya Patel")
    assert store.profile(a).name == "Maya Patel"
    admin.merge(a, b)  # b was a all along
    assert store.person_ids() == [a] and store.profile(a).views == 2
    assert store.identify(embeddings["t1-1"]).person_id == a, "the merged view now finds the merged person"
    view = sorted(k.decode() for k in store.redis.hkeys(MemoryKeys.faces(a)))[1]
    split = admin.split(a, view)  # not this person after all
    assert sorted(store.person_ids()) == sorted([a, split])
    assert store.identify(embeddings["t1-1"]).person_id == split
    assert store.identify(embeddings["t1-0"]).person_id == a


def scan_for(r: redis.Redis, needle: bytes, views: np.ndarray) -> list[str]:
    """Every place in the whole database that holds ``needle`` or an embedding of these views."""

    def holds(value: bytes) -> bool:
        if needle in value:
            return True
        if len(value) == DIM_BYTES:
            vector = np.frombuffer(value, dtype="<f4")
            return bool(np.isfinite(vector).all() and (views @ vector).max() > 0.4)
        return False

    found = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        values: list[bytes] = [key]
        if kind == "string":
            values.append(r.get(key) or b"")
        elif kind == "hash":
            values += [x for kv in r.hgetall(key).items() for x in kv]
        elif kind == "set":
            values += list(r.smembers(key))
        elif kind == "zset":
            values += r.zrange(key, 0, -1)
        elif kind == "stream":
            values += [x for _, fields in r.xrange(key) for kv in fields.items() for x in kv]
        found += [key.decode() for v in values if holds(v)]
    return found


def test_forget_leaves_no_trace_of_the_person(
    r: redis.Redis,
    memory_settings: MemorySettings,
    face_pack: FacePackModel,
    embeddings: dict[str, np.ndarray],
) -> None:
    handler = MemoryHandler(r, memory_settings)
    now = time.time()
    r.sadd(MemoryKeys.SESSIONS, "day1")
    sarah = frame(photo("astronaut"), "day1-f1").model_copy(update={"session": "day1", "t": now - 19})
    r.xadd("frames", sarah.to_fields())
    for i, text in enumerate(["Hi, I'm Sarah Chen from Stripe.", "I work on rate limits."]):
        r.xadd("transcripts", line("day1", i, text, now - 20 + 0.5 * i).to_fields())
        segment = AudioSegmentMessage(
            segment_id=f"day1-a{i}",
            session="day1",
            t_start=now,
            t_end=now + 1,
            sample_rate=16000,
            audio=b"\0\0",
        )
        r.xadd("audio:segments", segment.to_fields())
    for face in faces_of(face_pack, photo("astronaut"), "day1", "day1-f1", now - 19):
        r.xadd("faces", face.to_fields())
    # Someone else, who must survive.
    tom = frame(photo("t1"), "day1-f2").model_copy(update={"session": "day1", "t": now - 18})
    r.xadd("frames", tom.to_fields())
    run(r, memory_settings, handler)
    time.sleep(1.1)  # quiet for longer than the gap
    run(r, memory_settings, handler)
    [pid] = [p for p in handler.store.person_ids() if handler.store.profile(p).name == "Sarah Chen"]
    views = handler.store.views(pid)
    assert views is not None and scan_for(r, pid.encode(), views), "the person is there before"

    replica = PersonStore(r, memory_settings.match)
    assert replica.match(embeddings["astronaut"]).person_id == pid, "a replica has the person in its index"

    counts = PersonAdmin(handler.store, memory_settings.streams).forget(pid)

    assert scan_for(r, pid.encode(), views) == []
    assert counts["views"] == 1 and counts["encounters"] == 1 and counts["facts"] >= 1
    assert counts["stream:faces"] == 1 and counts["stream:frames"] == 1
    assert counts["stream:recalls"] == 2, "the card when seen, and the card when she introduced herself"
    assert counts["stream:transcripts"] == 2 and counts["stream:audio:segments"] == 2
    assert counts["stream:encounters"] == 1
    assert [FrameMessage.from_fields(f).frame_id for _, f in r.xrange("frames")] == ["day1-f2"]
    assert replica.match(embeddings["astronaut"]).outcome == "new", "the replica forgot the face too"


def test_person_commands_of_the_cli(
    store: PersonStore,
    embeddings: dict[str, np.ndarray],
    settings,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    from typer.testing import CliRunner

    from services.cli import app

    monkeypatch.setenv("CONVO_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    pid = (
        store.process_encounter(embeddings["astronaut"], "Hi, I'm Sarah Chen from Stripe.")
        and store.person_ids()[0]
    )
    cli = CliRunner()
    listing = cli.invoke(app, ["person", "list"])
    assert listing.exit_code == 0 and pid in listing.output and "Sarah Chen" in listing.output
    shown = cli.invoke(app, ["person", "show", pid])
    assert "Sarah Chen from Stripe" in shown.output and "works at Stripe" in shown.output
    assert cli.invoke(app, ["person", "rename", pid, "Sarah C."]).exit_code == 0
    assert store.profile(pid).name == "Sarah C."
    forgot = cli.invoke(app, ["person", "forget", pid, "--yes"])
    assert forgot.exit_code == 0 and "views: 1" in forgot.output and store.person_ids() == []


def test_forget_during_match(
    r: redis.Redis, memory_settings: MemorySettings, embeddings: dict[str, np.ndarray]
) -> None:
    """Forget follows lineage: a look-alike keeps their faces; and a match still in flight when the
    person is forgotten cannot bring them back."""
    handler = MemoryHandler(r, memory_settings)
    r.sadd(MemoryKeys.SESSIONS, "s")
    # a face and its mirror image in one frame: two people (cosine 0.96) by the frame rule
    for i, key in enumerate(["astronaut", "astronaut-flipped"]):
        face = FaceMessage(
            face_id=f"f1:{i}", frame_id="f1", session="s", t=time.time(), bbox=[0, 0, 9, 9],
            det_score=0.9, embedding=embedding_to_bytes(embeddings[key]),
        )  # fmt: skip
        r.xadd("faces", face.to_fields())
    run(r, memory_settings, handler)
    owners = {f: p for p, f in handler.store.repo.frame_claims("f1").items()}
    one, other = owners["f1:0"], owners["f1:1"]
    in_flight = handler.store.match(embeddings["astronaut"], exclude={other})
    assert in_flight.person_id == one
    PersonAdmin(handler.store, memory_settings.streams).forget(one)
    assert [f[b"face_id"] for _, f in r.xrange("faces")] == [b"f1:1"], "the look-alike keeps their face"
    handler.store._touch(one, embeddings["astronaut"], b"thumb", time.time())  # the match lands late
    assert not [k for k in r.scan_iter(f"*{one}*")], "nothing of the forgotten person came back"
    assert handler.store.profile(other).views == 1
