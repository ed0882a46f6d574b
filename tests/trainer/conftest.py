from pathlib import Path

import pytest

from services.trainer.settings import DatasetSettings, JobSettings, LoraSettings, TrainerSettings
from shared.redis_server import RedisServer
from shared.schemas import EncounterMessage
from shared.settings import ServiceSettings

PEOPLE = [
    ("Sarah Chen", "Stripe", "rate limits"), ("Tom Baker", "Acme", "bread"),
    ("Lee Wong", "Figma", "design"), ("Maya Patel", "Notion", "docs"),
    ("Omar Haddad", "Shopify", "checkout"), ("Ana Silva", "Spotify", "music"),
]  # fmt: skip


def encounter(i: int, **change: object) -> EncounterMessage:
    """The i-th of a series of conversations with six people, five each."""
    name, company, topic = PEOPLE[i % len(PEOPLE)]
    fields = {
        "encounter_id": f"e-{i:03d}", "session": "s1", "person_id": f"p-{i % len(PEOPLE)}",
        "t_start": 1000.0 + i * 100, "t_end": 1060.0 + i * 100,
        "transcript": f"Hi, I'm {name} from {company}. I work on {topic}. Write to me at "
                      f"{name.split()[0].lower()}@{company.lower()}.com or call +1 415 555 01{i:02d}.",
        "summary": f"Met {name} from {company}. Talked about {topic}.",
        "facts": [{"text": f"works on {topic}", "kind": "fact", "source": f"e-{i:03d}"}],
        "name": name, "company": company, "topics": [topic], "backend": "rules",
    }  # fmt: skip
    return EncounterMessage(**(fields | change))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Empty at the start of a run, so every run converts the packaged GGUF once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def trainer_settings(
    redis_server: RedisServer, settings: ServiceSettings, model_cache: Path, tmp_path: Path
) -> TrainerSettings:
    return TrainerSettings(
        redis_url=redis_server.url, consumer=settings.consumer, consumer_name="trainer-test",
        dataset=DatasetSettings(dir=tmp_path / "dataset", eval_fraction=0.34),
        lora=LoraSettings(steps=24, batch_size=4, learning_rate=1e-3, cache_dir=model_cache),
        trainer=JobSettings(adapters_dir=tmp_path / "adapters", every_rows=10, check_every_s=0.1),
    )  # fmt: skip
