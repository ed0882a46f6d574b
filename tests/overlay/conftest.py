"""The overlay as its own process on the test Redis, and people seeded from real faces."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.memory.extract import Extraction
from services.memory.person_store import PersonStore
from shared.redis_server import RedisServer, free_port
from shared.schemas import FaceMessage
from tests.face.conftest import frame, photo

TOKEN = "test-token-1234"


@dataclass
class Overlay:
    url: str
    token: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def overlay(redis_server: RedisServer) -> Iterator[Overlay]:
    """``python -m services.overlay`` on a free port, as the stack runs it."""
    port = free_port()
    env = {
        **os.environ, "CONVO_REDIS_URL": redis_server.url, "CONVO_OVERLAY__PORT": str(port),
        "CONVO_OVERLAY__ADMIN_TOKEN": TOKEN, "CONVO_OVERLAY__BLOCK_MS": "200",
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "services.overlay"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "the overlay exited at start"
        assert time.monotonic() < deadline, "the overlay did not come up"
        time.sleep(0.2)
    yield Overlay(url, TOKEN, proc)
    proc.terminate()
    assert proc.wait(15) == 0


@pytest.fixture(scope="session")
def sarah_faces(face_pack: FacePackModel) -> list[FaceMessage]:
    """The astronaut (our 'Sarah') twice, from two photos, with real thumbnails."""
    import cv2

    handler = FaceHandler(face_pack.settings, face_pack)
    astronaut = photo("astronaut")
    return [handler(frame(astronaut, "f1"))[0], handler(frame(cv2.flip(astronaut, 1), "f2"))[0]]


@pytest.fixture(scope="session")
def crowd_faces(face_pack: FacePackModel) -> list[FaceMessage]:
    return FaceHandler(face_pack.settings, face_pack)(frame(photo("t1"), "crowd"))


def meet(store: PersonStore, face: FaceMessage, t: float, eid: str, **said: object) -> str:
    """A face seen and a conversation recorded with them; returns the person id."""
    pid = store.identify(face.vector(), frame_id=f"{eid}-frame", thumb=face.thumb, t=t).person_id
    assert pid
    extraction = Extraction(**said)  # type: ignore[arg-type]
    store.record_encounter(
        pid, eid, extraction, t - 60, t, "s1", str(said.get("summary", "")), [f"{eid}-seg"]
    )
    return pid


@pytest.fixture
def people(r: redis.Redis, store: PersonStore, sarah_faces, crowd_faces) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Sarah (met at the climbing gym three days ago) and Tom, and a stranger seen once."""
    now = time.time()
    sarah = meet(
        store, sarah_faces[0], now - 3 * 86400, "e-1", name="Sarah Chen", company="Stripe", role="engineer",
        place="climbing gym", topics=["rate limits"], open_threads=["climb together sometime"],
        facts=["works on payments API"], summary="Met Sarah Chen from Stripe at the climbing gym.",
    )  # fmt: skip
    tom = meet(
        store, crowd_faces[0], now - 7200, "e-2", name="Tom Berg", company="Acme",
        topics=["hiking"], summary="Tom Berg from Acme talked about hiking.",
    )  # fmt: skip
    stranger = store.identify(crowd_faces[1].vector(), frame_id="x", thumb=crowd_faces[1].thumb).person_id
    assert stranger
    return {"sarah": sarah, "tom": tom, "stranger": stranger}


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page() -> Iterator[Page]:
    """A page in Debian's headless Chromium (no browser download)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1100, "height": 640}, device_scale_factor=1)
        browser.close()
