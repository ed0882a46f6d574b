"""Fixtures shared by every test: a private redis-server on a free port (never :6379)."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.face.settings import FaceModelSettings
from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings
from services.voice.model import VoiceEncoderModel
from services.voice.settings import VoiceModelSettings
from shared.redis_server import RedisServer
from shared.settings import ConsumerSettings, ServiceSettings


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the private server, flushed before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: RedisServer) -> ServiceSettings:
    """Settings with fast retry timings, so reclaim and DLQ paths run in test time."""
    return ServiceSettings(
        redis_url=redis_server.url,
        consumer=ConsumerSettings(claim_idle_ms=300, claim_every_s=0.1, block_ms=100, max_deliveries=3),
        consumer_name="test-consumer",
    )


@pytest.fixture
def artifacts() -> Path:
    path = Path(__file__).parent / "artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def face_settings(tmp_path_factory: pytest.TempPathFactory) -> FaceModelSettings:
    return FaceModelSettings(model_root=tmp_path_factory.mktemp("insightface"))


@pytest.fixture(scope="session")
def face_pack(face_settings: FaceModelSettings) -> FacePackModel:
    return FacePackModel(face_settings).load()


@pytest.fixture
def store(r: redis.Redis) -> PersonStore:
    return PersonStore(r, MatchSettings(), wearer="Alex")


@pytest.fixture(scope="session")
def embeddings(face_pack: FacePackModel) -> dict[str, np.ndarray]:
    """Real buffalo_s embeddings: the astronaut in three photos, and the six people of t1.jpg."""
    import cv2

    from tests.face.conftest import frame, photo

    handler = FaceHandler(face_pack.settings, face_pack)
    astronaut = photo("astronaut")
    out = {
        "astronaut": handler(frame(astronaut))[0].vector(),
        "astronaut-flipped": handler(frame(cv2.flip(astronaut, 1)))[0].vector(),
        "astronaut-small": handler(frame(cv2.resize(astronaut, None, fx=0.5, fy=0.5)))[0].vector(),
    }
    for i, face in enumerate(handler(frame(photo("t1")))):
        out[f"t1-{i}"] = face.vector()
    return out


@pytest.fixture(scope="session")
def voice_model() -> VoiceEncoderModel:
    """resemblyzer's GE2E encoder, from the weights in its wheel."""
    return VoiceEncoderModel(VoiceModelSettings()).load()


@pytest.fixture(scope="session")
def readers() -> dict[str, list[tuple[np.ndarray, str]]]:
    """Two real speakers (pocketsphinx-testdata): a LibriVox reader and a card reader."""
    from services.voice.samples import recorded

    return recorded()
