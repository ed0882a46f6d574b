""".env.example lists every setting with its default, and every service reads it."""

from pathlib import Path

import pytest

from services.envfile import all_service_settings, render_env_example

REPO = Path(__file__).parents[1]


def test_env_example_is_current() -> None:
    assert (REPO / ".env.example").read_text() == render_env_example(all_service_settings()), (
        "settings changed: regenerate with `convo env-example > .env.example`"
    )


def test_every_service_starts_from_env_example(monkeypatch: pytest.MonkeyPatch) -> None:
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            monkeypatch.setenv(key, value)
    for cls in all_service_settings():
        settings = cls(_env_file=None)
        assert settings.redis_url == "redis://127.0.0.1:6380/0"
    assert all_service_settings()[1](_env_file=None).whisper.hallucinations[0] == "thank you"
