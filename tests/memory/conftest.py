import pytest

from services.memory.settings import EncounterSettings, MemorySettings
from shared.settings import ServiceSettings


@pytest.fixture
def memory_settings(settings: ServiceSettings) -> MemorySettings:
    return MemorySettings(
        redis_url=settings.redis_url, consumer=settings.consumer, consumer_name="mem-test",
        wearer_name="Alex", encounter=EncounterSettings(gap_s=1.0, tick_s=0.05),
    )  # fmt: skip
