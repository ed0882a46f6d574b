"""A flood of frames at ten times the rate the stack is built for (20 fps against the 2 fps default),
while a conversation is replayed in real time through the same capture process. The face stage
cannot keep up: capture drops frames and counts them, the backlog and memory stay bounded, and
every speech segment is transcribed."""

import ast
import json
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import redis

from shared.redis_server import free_port
from shared.schemas import AudioSegmentMessage, TranscriptMessage
from tests.chaos.conftest import Stack, json_records, wait_until
from tests.face.conftest import photo
from tests.speech import RATE, speech, write_wav

pytestmark = pytest.mark.timeout(600)
FPS = 20
MAX_BACKLOG = 8
LINES = [
    "Hi, I'm Sarah Chen from Stripe.", "We met at the climbing gym.", "I work on rate limits.",
    "Let's get coffee on Friday.", "The new wall opens soon.", "See you there.",
]  # fmt: skip


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def backlog(client: redis.Redis, stream: str, group: str) -> int:
    for g in client.xinfo_groups(stream):
        if g["name"].decode() == group:
            return (g["lag"] or 0) + g["pending"]
    return 0


def test_a_frame_flood_is_shed_at_capture_and_speech_is_not_lost(
    stack: Stack, admin: redis.Redis, tmp_path: Path, artifacts: Path
) -> None:
    silence = np.zeros(RATE, np.float32)
    audio = np.concatenate([part for line in LINES for part in (speech(line, tmp_path), silence)])
    wav = write_wav(tmp_path / "talk.wav", audio)
    port = free_port()
    stack.env |= {
        "CONVO_FRAMES__HTTP_PORT": str(port), "CONVO_FRAMES__MAX_FPS": "1000",
        "CONVO_FRAMES__MARGIN_S": "100000",  # frames after speech count as during it: backpressure sheds
        "CONVO_FRAMES__MAX_BACKLOG": str(MAX_BACKLOG),
        # one photo posted again and again would reuse its embeddings (face.reuse_s); the flood
        # is of views that each need embedding, as a moving camera's would
        "CONVO_FACE__REUSE_S": "0",
    }  # fmt: skip
    face = stack.start("face")
    stack.start("transcriber")
    stack.wait_ready(admin, ["face", "transcriber"])
    capture = stack.start("capture", "--audio", str(wav), "--realtime", "--frames", "http", "--session", "fl")
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, 60, "the ingest")

    # six faces per frame: six embeddings each, so the face stage falls behind on any machine
    # this runs on, rather than only where one face at 20 fps is too much
    jpeg = cv2.imencode(".jpg", photo("t1"))[1].tobytes()
    answers: list[bool] = []
    samples: list[tuple[int, float, float, float]] = []  # face backlog, face RSS, capture RSS, Redis MB

    def flood() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            while capture.proc.poll() is None:
                started = time.monotonic()
                try:
                    res = http.post("/frames", content=jpeg, headers={"content-type": "image/jpeg"})
                except httpx.TransportError:
                    break  # capture finished its replay and closed the ingest
                answers.append(res.json()["forwarded"])
                time.sleep(max(1 / FPS - (time.monotonic() - started), 0))

    def sample() -> None:
        while capture.proc.poll() is None:
            waiting = backlog(admin, "frames", "face")
            mem = admin.info("memory")["used_memory"] / 2**20
            samples.append((waiting, rss_mb(face.proc.pid), rss_mb(capture.proc.pid), mem))
            time.sleep(0.5)

    threads = [threading.Thread(target=flood), threading.Thread(target=sample)]
    for t in threads:
        t.start()
    capture.proc.wait(timeout=len(audio) / RATE + 120)
    for t in threads:
        t.join(30)
    assert capture.proc.returncode == 0, stack.tail()

    segments = {AudioSegmentMessage.from_fields(f).segment_id for _, f in admin.xrange("audio:segments")}
    assert len(segments) >= len(LINES) - 1, "capture cut the conversation into segments"

    def transcribed() -> bool:
        return {
            TranscriptMessage.from_fields(f).segment_id for _, f in admin.xrange("transcripts")
        } == segments

    wait_until(transcribed, 120, "every segment's transcript")
    forwarded, dropped = answers.count(True), answers.count(False)
    seconds = len(audio) / RATE
    assert len(answers) >= FPS * seconds * 0.5, "the flood really ran at about 20 fps"
    records = json_records(capture.log.read_text().splitlines())
    [summary] = [r["msg"] for r in records if r["msg"].startswith("capture session fl:")]
    published = int(summary.split(" segments, ")[1].split(" frames")[0])
    counted = ast.literal_eval(summary.split("frames dropped ")[1])  # by reason
    assert admin.xlen("frames") == published, "every frame capture published is there, and no other"
    # Besides the frames answered "forwarded", capture sends the one it held from just before
    # speech began (answered "not forwarded" at the time), unless backpressure drops it then.
    held_sent, held_dropped = published - forwarded, sum(counted.values()) - dropped
    assert held_sent >= 0 and held_dropped >= 0 and held_sent + held_dropped <= len(segments), summary
    worst = max(s[0] for s in samples)
    assert worst <= MAX_BACKLOG + 10, f"the face stage's backlog stayed near {MAX_BACKLOG}: {worst}"
    half = len(samples) // 2
    for i, what in ((1, "face"), (2, "capture"), (3, "redis")):
        growth = max(s[i] for s in samples[half:]) - max(s[i] for s in samples[:half])
        assert growth < 100, f"{what} memory grows under the flood: +{growth:.0f} MB"
    assert counted["backpressure"] > forwarded / 4, summary
    assert any("face stage is" in r["msg"] for r in records), "capture says it is shedding"
    figures = {
        "fps": FPS, "seconds": round(seconds), "frames_posted": len(answers), "forwarded": forwarded,
        "dropped": counted, "max_face_backlog": worst, "segments": len(segments), "segments_lost": 0,
        "max_redis_mb": round(max(s[3] for s in samples), 1),
        "rss_mb": {"face": round(max(s[1] for s in samples)), "capture": round(max(s[2] for s in samples))},
    }  # fmt: skip
    (artifacts / "flood.json").write_text(json.dumps(figures, indent=1))
    print(figures)
