"""Kill replicas and Redis under load: every input still has exactly one output downstream.

Two replicas each of transcriber, face and memory run as processes. 200 speech segments and
200 frames of ten sessions (seven people, three of them met twice) are fed through capture's
publisher as the capture user, one conversation after the other as they
are transcribed. Meanwhile a random replica is SIGKILLed every few seconds and
a new one started, and redis-server itself is SIGKILLed once and started again on its AOF.
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
from shared.images import encode_jpeg
from shared.publisher import Publisher
from shared.runtime import connect
from shared.schemas import AudioSegmentMessage, EncounterMessage, FaceMessage, FrameMessage, TranscriptMessage
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys
from tests.chaos.conftest import Stack, json_records, person_crops, wait_until
from tests.speech import RATE, speech

pytestmark = pytest.mark.timeout(900)
SESSIONS, PER_SESSION = 10, 20  # 200 segments and 200 frames
PHRASES = [
    "Hi, I'm Sarah Chen from Stripe.", "We met at the climbing gym last week.",
    "I work on payments and rate limits.", "Let's get coffee on Friday.",
    "The new bouldering wall opens soon.",
]  # fmt: skip
KILL_EVERY_S = 6.0
SERVICES = ("transcriber", "face", "memory")


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
    expected_faces: dict[str, int] = {}
    segments: list[str] = []
    base = time.time() - 3600  # speech an hour ago: a session ends once nothing new came for the gap

    def feed() -> None:
        for s in range(SESSIONS):
            session, who = f"chaos-{s}", s % len(people)
            publisher.announce_session(session)
            for i in range(PER_SESSION):
                t, clip = base + s * 120 + i * 2.5, clips[i % len(clips)]
                seg = AudioSegmentMessage(
                    segment_id=f"{session}-a{i:03d}", session=session, t_start=t,
                    t_end=t + len(clip) / 2 / RATE, sample_rate=RATE, audio=clip,
                )  # fmt: skip
                frame = FrameMessage(
                    frame_id=f"{session}-f{i:03d}", session=session, t=t + 0.5,
                    width=sizes[who][0], height=sizes[who][1], image=people[who],
                )  # fmt: skip
                publisher.publish(seg)
                publisher.publish(frame)
                segments.append(seg.segment_id)
                expected_faces[frame.frame_id] = faces_in[who]
            # Speech comes at the pace it is spoken: the next conversation once this one is heard.
            wait_until(
                lambda s=session: heard(s) == PER_SESSION, 240, f"{session}'s transcripts", every_s=0.5
            )

    def heard(session: str) -> int:
        return sum(
            TranscriptMessage.from_fields(f).session == session for _, f in admin.xrange("transcripts")
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

    def finished() -> bool:
        return (
            len({TranscriptMessage.from_fields(f).segment_id for _, f in admin.xrange("transcripts")})
            >= len(segments)
            and len({FaceMessage.from_fields(f).frame_id for _, f in admin.xrange("faces")}) >= len(segments)
            and admin.xlen("encounters") >= SESSIONS
            and not admin.scard(MemoryKeys.OPEN_SESSIONS)
            and not admin.scard(MemoryKeys.CLOSING)
        )

    wait_until(finished, 420, "every input's outputs", every_s=1.0)
    total_s = time.monotonic() - t0
    time.sleep(3)  # anything late would show up now

    assert not stack.crashed(), stack.tail()
    assert admin.xlen("dlq") == 0, admin.xrange("dlq", count=3)
    transcripts = Counter(TranscriptMessage.from_fields(f).segment_id for _, f in admin.xrange("transcripts"))
    assert set(transcripts) == set(segments) and max(transcripts.values()) == 1, "each segment once"
    faces = [FaceMessage.from_fields(f) for _, f in admin.xrange("faces")]
    assert Counter(f.frame_id for f in faces) == Counter(expected_faces), "each frame's faces once"
    assert len({f.face_id for f in faces}) == len(faces)
    assert admin.scard(MemoryKeys.PERSONS) == len(people), "no duplicate person"
    encounters = [EncounterMessage.from_fields(f) for _, f in admin.xrange("encounters")]
    assert sorted(e.session for e in encounters) == [f"chaos-{s}" for s in range(SESSIONS)], "one per session"
    person_of = {int(e.session.split("-")[1]): e.person_id for e in encounters}
    for s, pid in person_of.items():  # the same person in sessions s and s + 7, and no one else
        assert [t for t, p in person_of.items() if p == pid] == [
            t for t in person_of if t % len(people) == s % len(people)
        ]
    assert len({e.encounter_id for e in encounters}) == SESSIONS
    recorded = Counter(
        seg
        for e in encounters
        for seg in json.loads(admin.hget(MemoryKeys.encounter(e.encounter_id), "segments") or b"[]")
    )
    assert set(recorded) == set(segments) and max(recorded.values()) == 1, "each segment in one encounter"

    lines = stack.log_lines()
    records = json_records(lines)
    assert len(records) > 100, "the services log structured lines"
    text = "\n".join(lines)
    for secret in ("Sarah Chen", "climbing gym", "rate limits", "/9j/"):
        assert secret not in text, f"a payload ({secret!r}) leaked into a log"
    back_s = [ready_at(k["replica"].log, k["service"]) - k["at"] for k in kills]
    figures = {
        "replicas": "2 each of transcriber, face, memory",
        "inputs": {"segments": len(segments), "frames": len(expected_faces)},
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
