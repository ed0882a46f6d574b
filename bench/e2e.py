"""The whole loop as processes: "speech segment ends -> recall on the SSE stream" and "face frame
in -> recall card out", over 50 runs with tiny.en on this CPU.

Each run does what capture does when someone speaks while facing the wearer: at the moment
the speech segment ends it adds the segment to ``audio:segments`` and a camera frame to
``frames``. The transcriber, face, memory and overlay services run as processes, as
``make run`` starts them; a browser-like client follows the overlay's ``/events``.

- speech -> recall: from the segment's XADD until both its transcript and the card for the
  face are on the event stream (what the wearer sees).
- face -> card: from the frame's XADD until the card is on the event stream.
- Per stage, from the stream entry ids: time between an entry and the entry it led to, split
  into work (the stage's own handler time, from its Prometheus histogram) and wait (the rest:
  queueing, reading, writing). The ratio printed is the sum of the stages' work over the
  end-to-end latency: how much of what the wearer waits is model work.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import private_redis, report
from shared.images import encode_jpeg
from shared.redis_server import free_port
from shared.schemas import AudioSegmentMessage, FrameMessage
from shared.streams import MemoryKeys, heartbeat_key
from tests.face.conftest import photo
from tests.speech import RATE, speech

RUNS = 50
WARMUP = 3
SERVICES = {"transcriber": "transcriber", "face": "face", "memory": "memory"}  # module -> group


class Listener:
    """A tab on ``/events``: when each recall and transcript arrived."""

    def __init__(self, url: str) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, args=(url,), daemon=True).start()

    def _run(self, url: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the overlay stops at the end of the run
            self._follow(url)

    def _follow(self, url: str) -> None:
        with httpx.stream("GET", url, timeout=None) as res:
            kind = ""
            for line in res.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    key = data["recall_id"].split(":")[0] if kind == "recall" else data["segment_id"]
                    with self.cond:
                        self.arrived.setdefault(key, time.time())
                        self.cond.notify_all()

    def wait(self, *keys: str, timeout: float = 60) -> list[float]:
        with self.cond:
            if not self.cond.wait_for(lambda: all(k in self.arrived for k in keys), timeout):
                raise TimeoutError(f"no event for {[k for k in keys if k not in self.arrived]}")
            return [self.arrived[k] for k in keys]


def handler_seconds(port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of convo_handler_seconds per stream, from one service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, list[float]] = {}
    for kind, stream, value in re.findall(
        r'convo_handler_seconds_(sum|count)\{stage="[^"]+",stream="([^"]+)"\} (\S+)', text
    ):
        out.setdefault(stream, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {k: (v[0], v[1]) for k, v in out.items()}


def entry_time(client: redis.Redis, stream: str, field: str, value: str) -> float:
    """When the entry of ``stream`` whose ``field`` is ``value`` was added (its id's milliseconds)."""
    for entry_id, fields in client.xrevrange(stream, count=50):
        if fields.get(field.encode(), b"").decode().startswith(value):
            return int(entry_id.split(b"-")[0]) / 1000
    raise KeyError(f"{stream}: no {field}={value}")


def main() -> None:
    with private_redis() as server, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(server.url)
        ports = {name: free_port() for name in [*SERVICES, "overlay"]}
        env = {
            **os.environ, "CONVO_REDIS_URL": server.url, "CONVO_OVERLAY__PORT": str(ports["overlay"]),
            "CONVO_OVERLAY__ADMIN_TOKEN": "bench",
            "CONVO_MATCH__RECALL_COOLDOWN_S": "0",  # a card for every run, not one a minute
            "CONVO_ENCOUNTER__GAP_S": "3600",  # one long conversation: closing it is not measured here
        }  # fmt: skip
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=env | {"CONVO_METRICS_PORT": str(ports[name])},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name in [*SERVICES, "overlay"]
        ]
        try:
            deadline = time.monotonic() + 300
            while not all(next(client.scan_iter(heartbeat_key(g)), None) for g in SERVICES.values()):
                assert time.monotonic() < deadline, "services did not start"
                time.sleep(0.3)
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{ports['overlay']}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.3)
            listener = Listener(f"http://127.0.0.1:{ports['overlay']}/events")
            time.sleep(0.5)

            audio = speech("Hi, I'm Sarah Chen from Stripe.", Path(tmp))
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
            face = cv2.resize(photo("astronaut"), (480, 480))
            canvas = np.zeros((480, 640, 3), np.uint8)
            canvas[:, 80:560] = face
            jpeg = encode_jpeg(canvas, quality=85)
            client.sadd(MemoryKeys.SESSIONS, "bench")

            before: dict[str, dict[str, tuple[float, float]]] = {}
            speech_s, card_s = [], []
            stages: dict[str, list[float]] = {"transcriber": [], "face": [], "memory": [], "overlay": []}
            for i in range(WARMUP + RUNS):
                if i == WARMUP:
                    before = {n: handler_seconds(ports[n]) for n in SERVICES}
                t = time.time()
                seg = AudioSegmentMessage(
                    segment_id=f"seg-{i}", session="bench", t_start=t - len(audio) / RATE, t_end=t,
                    sample_rate=RATE, audio=pcm,
                )  # fmt: skip
                frame = FrameMessage(
                    frame_id=f"fr-{i}", session="bench", t=t, width=640, height=480, image=jpeg
                )
                with client.pipeline(transaction=False) as pipe:
                    pipe.xadd("frames", frame.to_fields())
                    pipe.xadd("audio:segments", seg.to_fields())
                    pipe.execute()
                sent = time.time()
                said, card = listener.wait(f"seg-{i}", f"fr-{i}")
                if i >= WARMUP:
                    speech_s.append(max(said, card) - sent)
                    card_s.append(card - sent)
                    t_face = entry_time(client, "faces", "frame_id", f"fr-{i}")
                    t_recall = entry_time(client, "recalls", "recall_id", f"fr-{i}")
                    t_text = entry_time(client, "transcripts", "segment_id", f"seg-{i}")
                    stages["face"].append(t_face - sent)
                    stages["memory"].append(t_recall - t_face)
                    stages["overlay"].append(card - t_recall)
                    stages["transcriber"].append(t_text - sent)
                time.sleep(max(0.0, 1.05 - (time.time() - card)))  # the card cooldown is 1 s at least
            after = {n: handler_seconds(ports[n]) for n in SERVICES}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)

    def work(name: str, stream: str) -> float:
        s0, c0 = before[name].get(stream, (0.0, 0.0))
        s1, c1 = after[name][stream]
        return (s1 - s0) / max(c1 - c0, 1)

    works = {
        "transcriber": work("transcriber", "audio:segments"),
        "face": work("face", "frames"),
        "memory": work("memory", "faces"),
        "overlay": 0.0,
    }
    print(f"{RUNS} runs (after {WARMUP} warm-up), tiny.en int8 and buffalo_s on CPU, services as processes")
    print(f"{'stage':<12} {'mean s':>8} {'work s':>8} {'wait s':>8}")
    means = {name: float(np.mean(values)) for name, values in stages.items()}
    for name, mean in means.items():
        print(f"{name:<12} {mean:8.3f} {works[name]:8.3f} {mean - works[name]:8.3f}")
    p50_speech, p95_speech = np.percentile(speech_s, [50, 95])
    p50_card, p95_card = np.percentile(card_s, [50, 95])
    print(f"speech -> recall on SSE: p50 {p50_speech:.3f} s, p95 {p95_speech:.3f} s (goal p95 < 1.5 s)")
    print(f"face frame -> card on SSE: p50 {p50_card:.3f} s, p95 {p95_card:.3f} s")
    card_ratio = (works["face"] + works["memory"]) / float(np.mean(card_s))
    speech_ratio = works["transcriber"] / float(np.mean(speech_s))
    print(
        f"ratio model work / latency (mean): face->card {card_ratio:.2f}, speech->recall {speech_ratio:.2f}"
    )
    report(
        "e2e",
        p50_speech_to_recall_s=p50_speech,
        p95_speech_to_recall_s=p95_speech,
        p95_face_to_card_s=p95_card,
    )


if __name__ == "__main__":
    main()
