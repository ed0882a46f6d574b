"""Kill replicas and Redis under load: every input still has exactly one output downstream.

Two replicas each of transcriber, face, memory and scribe run as processes. 200 speech segments and
200 frames of ten conversations in five sessions (two conversations each, as a day of capture
holds several; seven people, three of them met twice) are fed through capture's publisher as
the capture user, one conversation after the other as they are transcribed. Meanwhile a random
replica is SIGKILLed every few seconds and a new one started, redis-server itself is SIGKILLed
once and started again on its AOF, and the wearer forgets one person and merges two others
(one of them in a conversation at that moment).
"""

import io
import json
import random
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.memory.admin import PersonAdmin
from services.memory.person_store import PersonStore
from services.memory.settings import MemorySettings
from services.trainer.settings import DatasetSettings
from shared.images import encode_jpeg
from shared.publisher import Publisher
from shared.runtime import connect
from shared.schemas import (
    AudioSegmentMessage,
    ConversationMessage,
    EncounterMessage,
    FaceMessage,
    FrameMessage,
    TranscriptMessage,
)
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys
from tests.chaos.conftest import Stack, json_records, person_crops, wait_until
from tests.speech import RATE, speech

pytestmark = pytest.mark.timeout(900)
SESSIONS, PARTS, PER_CONVERSATION = 5, 2, 20  # ten conversations: 200 segments and 200 frames
CONVERSATIONS = SESSIONS * PARTS
FORGET, MERGE = 3, (0, 1)  # forget conversation 3's person; merge conversation 1's into 0's
MERGE_DURING = 7  # ...while conversation 7 (person 0 met again) is being heard
PHRASES = [
    "Hi, I'm Sarah Chen from Stripe.", "We met at the climbing gym last week.",
    "I work on payments and rate limits.", "Let's get coffee on Friday.",
    "The new bouldering wall opens soon.",
]  # fmt: skip
KILL_EVERY_S = 6.0
SERVICES = ("transcriber", "face", "memory", "scribe")


def ready_at(log: Path, service: str) -> float:
    """When a replica had loaded its models and started consuming: its log line saying so."""
    for record in json_records(log.read_text().splitlines()):
        if record["msg"].startswith(f"{service} consumer "):
            return datetime.fromisoformat(record["t"]).timestamp()
    raise AssertionError(f"{log.name} never started consuming")


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_sigkill_replicas_and_redis_lose_nothing_and_duplicate_nothing(
    stack: Stack, admin: redis.Redis, face_pack: FacePackModel, tmp_path: Path, artifacts: Path
) -> None:
    clips = [pcm(speech(text, tmp_path)) for text in PHRASES]
    people = [encode_jpeg(image, quality=90) for image in person_crops(face_pack)]
    sizes = [Image.open(io.BytesIO(p)).size for p in people]
    handler = FaceHandler(face_pack.settings, face_pack)
    faces_in = [
        len(handler(FrameMessage(frame_id="x", session="x", t=0, width=w, height=h, image=p)))
        for p, (w, h) in zip(people, sizes, strict=True)
    ]
    assert all(faces_in), "each person's image has a face the model finds"

    stack.env |= {"CONVO_ENCOUNTER__GAP_S": "30", "CONVO_CONSUMER__MAX_DELIVERIES": "5"}
    for service in SERVICES * 2:
        stack.start(service)
    stack.wait_ready(admin, list(SERVICES))

    settings = ServiceSettings(redis_url=stack.server.url, acl_dir=stack.server.acl_dir)
    publisher = Publisher(connect(settings, "capture"), settings)
    memory = MemorySettings(redis_url=stack.server.url, acl_dir=stack.server.acl_dir)
    wearer = PersonAdmin(
        PersonStore(admin, memory.match), memory.streams, DatasetSettings(dir=tmp_path / "rows")
    )
    expected_faces: dict[str, int] = {}
    segments: dict[str, int] = {}  # segment id -> conversation
    frames: dict[str, int] = {}  # frame id -> conversation
    done: dict[str, object] = {}
    base = time.time() - 3600  # speech an hour ago: a conversation ends once nothing new came for the gap

    def person_of(conversation: int) -> str:
        """Who memory says a finished conversation was with, from its encounter's segments."""
        wait_until(
            lambda: conversation in encounter_of(), 240, f"conversation {conversation}'s encounter", 0.5
        )
        return encounter_of()[conversation]

    def encounter_of() -> dict[int, str]:
        """conversation -> person, as memory keeps it now (a merge re-points encounters)."""
        out = {}
        for _, f in admin.xrange("encounters"):
            key = MemoryKeys.encounter(EncounterMessage.from_fields(f).encounter_id)
            kept, pid = admin.hmget(key, "segments", "person_id")
            for seg in json.loads(kept or b"[]")[:1]:
                out[segments[seg]] = pid.decode()
        return out

    def as_wearer(action: str, *args: str) -> None:  # a command run while Redis may be restarting
        wait_until(lambda: getattr(wearer, action)(*args) or True, 60, f"person {action}", every_s=0.5)
        done[action] = args

    def feed() -> None:
        for k in range(CONVERSATIONS):
            session, part, who = f"chaos-{k // PARTS}", k % PARTS, k % len(people)
            if part == 0:
                publisher.announce_session(session)
            if k == FORGET + 2:  # the forgotten person's conversation has ended and been written
                as_wearer("forget", person_of(FORGET))
            for i in range(PER_CONVERSATION):
                t, clip = base + k * 120 + i * 2.5, clips[i % len(clips)]
                seg = AudioSegmentMessage(
                    segment_id=f"{session}-c{part}-a{i:03d}", session=session, t_start=t,
                    t_end=t + len(clip) / 2 / RATE, sample_rate=RATE, audio=clip,
                )  # fmt: skip
                frame = FrameMessage(
                    frame_id=f"{session}-c{part}-f{i:03d}", session=session, t=t + 0.5,
                    width=sizes[who][0], height=sizes[who][1], image=people[who],
                )  # fmt: skip
                publisher.publish(seg)
                publisher.publish(frame)
                segments[seg.segment_id], frames[frame.frame_id] = k, k
                expected_faces[frame.frame_id] = faces_in[who]
                if k == MERGE_DURING and i == PER_CONVERSATION // 2:
                    as_wearer("merge", person_of(MERGE[0]), person_of(MERGE[1]))
            # Speech comes at the pace it is spoken: the next conversation once this one is heard.
            wait_until(lambda k=k: heard(k) == PER_CONVERSATION, 240, f"conversation {k}'s transcripts", 0.5)

    def heard(conversation: int) -> int:
        return sum(
            segments.get(TranscriptMessage.from_fields(f).segment_id) == conversation
            for _, f in admin.xrange("transcripts")
        )

    kills: list[dict] = []
    redis_outage: dict[str, float] = {}
    calm = threading.Event()

    def written() -> int:
        return admin.xlen("transcripts") + admin.xlen("faces")

    def chaos() -> None:
        rng = random.Random(8)
        started = time.monotonic()
        while not calm.wait(KILL_EVERY_S):
            if not redis_outage and time.monotonic() - started > 10:
                stack.server.kill()  # SIGKILL: no shutdown, no final flush
                redis_outage["killed"] = time.monotonic()
                time.sleep(2)
                stack.server.start()
                redis_outage["restarted"] = time.monotonic()
                before = written()
                wait_until(lambda b=before: written() > b, 120, "progress after the Redis restart", 0.05)
                redis_outage["recovered"] = time.monotonic()  # the stack writes again, on its own
                continue
            service = rng.choice(SERVICES)
            victim = rng.choice(stack.live(service))
            stack.kill(victim)
            fresh = stack.start(service)
            kills.append({"service": service, "at": time.time(), "replica": fresh})

    feeder, killer = threading.Thread(target=feed), threading.Thread(target=chaos)
    t0 = time.monotonic()
    feeder.start()
    killer.start()
    try:
        feeder.join(300)

        wait_until(lambda: "recovered" in redis_outage, 240, "recovery from the Redis restart")
        time.sleep(8)  # a few more kills after the last input went in
    finally:
        calm.set()
        killer.join(60)

    forgotten = {seg for seg, k in segments.items() if k == FORGET}
    kept_segments = set(segments) - forgotten
    kept_faces = Counter({f: n for f, n in expected_faces.items() if frames[f] != FORGET})

    def finished() -> bool:
        return (
            len({TranscriptMessage.from_fields(f).segment_id for _, f in admin.xrange("transcripts")})
            >= len(kept_segments)
            and len({FaceMessage.from_fields(f).frame_id for _, f in admin.xrange("faces")})
            >= len(kept_faces)
            and admin.xlen("encounters") >= CONVERSATIONS - 1
            and not admin.scard(MemoryKeys.OPEN_SESSIONS)
            and not admin.scard(MemoryKeys.CLOSING)
        )

    wait_until(finished, 420, "every input's outputs", every_s=1.0)
    total_s = time.monotonic() - t0
    time.sleep(3)  # anything late would show up now

    assert not stack.crashed(), stack.tail()
    assert set(done) == {"forget", "merge"}
    assert admin.xlen("dlq") == 0, admin.xrange("dlq", count=3)
    transcripts = Counter(TranscriptMessage.from_fields(f).segment_id for _, f in admin.xrange("transcripts"))
    assert set(transcripts) == kept_segments and max(transcripts.values()) == 1, "each segment once"
    faces = [FaceMessage.from_fields(f) for _, f in admin.xrange("faces")]
    assert Counter(f.frame_id for f in faces) == kept_faces, "each frame's faces once, none forgotten"
    assert len({f.face_id for f in faces}) == len(faces)
    assert admin.scard(MemoryKeys.PERSONS) == len(people) - 2, (
        "no duplicate person; one forgotten, one merged"
    )
    encounters = [EncounterMessage.from_fields(f) for _, f in admin.xrange("encounters")]
    assert len({e.encounter_id for e in encounters}) == len(encounters) == CONVERSATIONS - 1, "one each"
    assert Counter(e.session for e in encounters) == Counter(
        f"chaos-{k // PARTS}" for k in range(CONVERSATIONS) if k != FORGET
    ), "each session's conversations apart"
    person = encounter_of()
    assert FORGET not in person and forgotten.isdisjoint(
        seg
        for _, f in admin.xrange("audio:segments")
        for seg in [AudioSegmentMessage.from_fields(f).segment_id]
    ), "the forgotten conversation is gone everywhere"
    spoken = [
        h for _, f in admin.xrange("conversations") if (h := ConversationMessage.from_fields(f)).segments
    ]
    assert sorted(h.encounter_id for h in spoken) == sorted(e.encounter_id for e in encounters), (
        "each conversation handed to the scribe once; the forgotten one's hand-over is gone too"
    )

    def face(k: int) -> int:  # which face a conversation had, the merged two as one
        return MERGE[0] if k % len(people) in MERGE else k % len(people)

    for k, pid in person.items():  # the same person where the same face was, merged ones together
        assert {j for j, p in person.items() if p == pid} == {j for j in person if face(j) == face(k)}, person
    recorded = Counter(
        seg
        for e in encounters
        for seg in json.loads(admin.hget(MemoryKeys.encounter(e.encounter_id), "segments") or b"[]")
    )
    assert set(recorded) == kept_segments and max(recorded.values()) == 1, "each segment in one encounter"
    for e in encounters:  # an encounter holds one conversation's segments, all of them
        kept = json.loads(admin.hget(MemoryKeys.encounter(e.encounter_id), "segments") or b"[]")
        assert len({segments[seg] for seg in kept}) == 1 and len(kept) == PER_CONVERSATION, e

    lines = stack.log_lines()
    records = json_records(lines)
    assert len(records) > 100, "the services log structured lines"
    text = "\n".join(lines)
    for secret in ("Sarah Chen", "climbing gym", "rate limits", "/9j/"):
        assert secret not in text, f"a payload ({secret!r}) leaked into a log"
    back_s = [ready_at(k["replica"].log, k["service"]) - k["at"] for k in kills]
    figures = {
        "replicas": "2 each of transcriber, face, memory, scribe",
        "inputs": {"segments": len(segments), "frames": len(expected_faces), "conversations": CONVERSATIONS},
        "wearer": "forgot one person, merged two (one of them mid-conversation)",
        "kills": dict(Counter(k["service"] for k in kills)),
        "kill_every_s": KILL_EVERY_S,
        "replica_back_s": {"mean": round(sum(back_s) / len(back_s), 1), "max": round(max(back_s), 1)},
        "redis_sigkills": 1,
        "redis_down_s": round(redis_outage["restarted"] - redis_outage["killed"], 1),
        "redis_recovery_s": round(redis_outage["recovered"] - redis_outage["restarted"], 1),
        "lost": 0,
        "duplicates": 0,
        "total_s": round(total_s, 1),
    }
    (artifacts / "chaos.json").write_text(json.dumps(figures, indent=1))
    print(figures)
