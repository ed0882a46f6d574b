import numpy as np
import pytest
import redis

from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.memory.person_store import PersonStore
from services.memory.settings import EncounterSettings, MatchSettings, MemorySettings
from shared.settings import ServiceSettings
from tests.face.conftest import frame, photo


@pytest.fixture
def store(r: redis.Redis) -> PersonStore:
    return PersonStore(r, MatchSettings(), wearer="Alex")


@pytest.fixture(scope="session")
def embeddings(face_pack: FacePackModel) -> dict[str, np.ndarray]:
    """Real buffalo_s embeddings: the astronaut in three photos, and the six people of t1.jpg."""
    import cv2

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


@pytest.fixture
def memory_settings(settings: ServiceSettings) -> MemorySettings:
    return MemorySettings(
        redis_url=settings.redis_url, consumer=settings.consumer, consumer_name="mem-test",
        wearer_name="Alex", encounter=EncounterSettings(gap_s=1.0, tick_s=0.05),
    )  # fmt: skip
