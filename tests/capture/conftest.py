from collections.abc import Iterator

import pytest

from services.capture.model import SileroVadModel
from services.capture.settings import CaptureSettings
from shared.settings import ServiceSettings


@pytest.fixture(scope="session")
def vad() -> SileroVadModel:
    return SileroVadModel().load()


@pytest.fixture
def capture_settings(settings: ServiceSettings) -> Iterator[CaptureSettings]:
    yield CaptureSettings(redis_url=settings.redis_url, session="test", consumer=settings.consumer)
