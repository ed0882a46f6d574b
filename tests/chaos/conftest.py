"""The whole stack as processes on a Redis with ACLs and AOF, for the fault and load tests."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from services.face.model import FacePackModel, link_packaged_pack
from shared import acl
from shared.redis_server import RedisServer
from shared.settings import ServiceSettings
from shared.streams import heartbeat_key

REPO = Path(__file__).parents[2]


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server loading the generated ``users.acl``, AOF with fsync on every write."""
    acl.write(ServiceSettings(), tmp_path / "acl")
    with RedisServer(tmp_path / "redis", acl_dir=tmp_path / "acl") as server:
        yield server


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    client = acl_server.client()
    yield client
    client.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.2) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout_s``."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (redis.ConnectionError, httpx.TransportError):
            pass  # Redis is being restarted, or a server is not listening yet
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(every_s)


@dataclass
class Replica:
    service: str
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"


class Stack:
    """Service replicas as processes on one Redis, each writing its JSON log to a file of its own."""

    def __init__(self, server: RedisServer, tmp: Path, **env: str) -> None:
        self.server = server
        self.tmp = tmp
        face_root = tmp / "insightface"
        link_packaged_pack(face_root)  # once, before replicas race to make the links
        self.env = {
            **os.environ,
            "CONVO_REDIS_URL": server.url, "CONVO_ACL_DIR": str(server.acl_dir),
            "CONVO_LOG_FORMAT": "json", "CONVO_FACE__MODEL_ROOT": str(face_root),
            "CONVO_DATASET__DIR": str(tmp / "dataset"), "CONVO_TRAINER__ADAPTERS_DIR": str(tmp / "adapters"),
            "CONVO_CONSUMER__CLAIM_IDLE_MS": "10000", "CONVO_CONSUMER__CLAIM_EVERY_S": "1",
            "CONVO_CONSUMER__BATCH_SIZE": "4",
            "CONVO_CONSUMER__BLOCK_MS": "200", "CONVO_CONSUMER__BACKOFF_MAX_S": "1",
            "CONVO_WHISPER__CPU_THREADS": "1", "CONVO_WHISPER__BEAM_SIZE": "1",
            "CONVO_EXTRACT__BACKEND": "rules", "PYTHONUNBUFFERED": "1",
            **env,
        }  # fmt: skip
        self.replicas: list[Replica] = []
        self.count: dict[str, int] = {}

    def start(self, service: str, *args: str) -> Replica:
        index = self.count.get(service, 0)
        self.count[service] = index + 1
        log = self.tmp / "logs" / f"{service}-{index}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}", *args], env=self.env, cwd=REPO,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        replica = Replica(service, index, proc, log)
        self.replicas.append(replica)
        return replica

    def live(self, service: str | None = None) -> list[Replica]:
        return [r for r in self.replicas if r.proc.poll() is None and service in (None, r.service)]

    def kill(self, replica: Replica) -> None:
        os.killpg(replica.proc.pid, signal.SIGKILL)
        replica.proc.wait()

    def wait_ready(self, client: redis.Redis, groups: list[str], timeout_s: float = 120) -> float:
        def ready() -> bool:
            return all(next(client.scan_iter(heartbeat_key(g)), None) for g in groups)

        return wait_until(ready, timeout_s, f"heartbeats of {groups}")

    def crashed(self) -> list[str]:
        """Replicas that exited by themselves (not killed by the test)."""
        return [f"{r.name} rc={r.proc.returncode}" for r in self.replicas if r.proc.poll() not in (None, -9)]

    def stop(self) -> None:
        for replica in self.live():
            os.killpg(replica.proc.pid, signal.SIGTERM)
        for replica in self.replicas:
            try:
                replica.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(replica.proc.pid, signal.SIGKILL)

    def log_lines(self) -> list[str]:
        return [line for r in self.replicas for line in r.log.read_text(errors="replace").splitlines()]

    def tail(self, n: int = 30) -> str:
        return "\n".join(
            f"[{r.name}] {line}" for r in self.replicas for line in r.log.read_text().splitlines()[-n:]
        )


@pytest.fixture
def stack(acl_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(acl_server, tmp_path)
    yield s
    s.stop()


def json_records(lines: list[str]) -> list[dict]:
    """The structured log records among ``lines`` (libraries may print plain lines of their own)."""
    out = []
    for line in lines:
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def person_crops(face_pack: FacePackModel) -> list[np.ndarray]:
    """Seven real people, one image each: the astronaut and the six faces of t1.jpg, cut out."""
    import cv2

    from services.face.handler import FaceHandler
    from tests.face.conftest import frame, photo

    group = photo("t1")
    crops = [photo("astronaut")]
    for face in FaceHandler(face_pack.settings, face_pack)(frame(group)):
        x0, y0, x1, y1 = face.bbox
        w, h = x1 - x0, y1 - y0
        box = [int(max(x0 - w * 0.6, 0)), int(max(y0 - h * 0.6, 0)), int(x1 + w * 0.6), int(y1 + h * 0.6)]
        crop = group[box[1] : box[3], box[0] : box[2]]
        crops.append(cv2.resize(crop, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC))
    return crops
