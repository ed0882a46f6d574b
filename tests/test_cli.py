"""The ``convo`` CLI against a real redis-server."""

from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, TranscriptMessage
from shared.settings import ServiceSettings
from tests.shared.test_consumer import echo, publish


@pytest.fixture
def cli(settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CONVO_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_status_shows_groups_consumers_pending_and_lag(r: redis.Redis, cli: CliRunner) -> None:
    publish(r, 6)
    r.xgroup_create("transcripts", "memory", id="0")
    r.xgroup_create("transcripts", "trainer", id="0")
    r.xreadgroup("memory", "mem-1", {"transcripts": ">"}, count=4)  # 4 pending, lag 2
    result = cli.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[3].strip(): line for line in result.output.splitlines() if line.count("│") > 6}
    memory = [c.strip() for c in rows["memory"].split("│")]
    trainer = [c.strip() for c in rows["trainer"].split("│")]
    assert memory[1:8] == ["transcripts", "6", "memory", "mem-1(4)", "4", "2", memory[7]]
    assert memory[7] == r.xrange("transcripts")[3][0].decode(), "last delivered is the fourth entry"
    assert trainer[3:7] == ["trainer", "none", "0", "6"]


def test_tail_summarises_binary_fields(r: redis.Redis, cli: CliRunner) -> None:
    r.xadd(
        "audio:segments",
        AudioSegmentMessage(
            segment_id="a1",
            session="s",
            t_start=1.0,
            t_end=2.0,
            sample_rate=16000,
            audio=b"\x00\x01" * 800,
        ).to_fields(),
    )
    result = cli.invoke(app, ["tail", "audio:segments", "--last", "1", "--count", "1"])
    assert result.exit_code == 0, result.output
    assert "segment_id='a1'" in result.output
    assert "audio=<1600 bytes>" in result.output


def test_dlq_list_retry_and_drop(r: redis.Redis, cli: CliRunner, settings: ServiceSettings) -> None:
    publish(r, 2, text="poison")
    Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    listing = cli.invoke(app, ["dlq", "list"])
    assert "2 letters" in listing.output and "poison entry" in listing.output
    first, second = (i.decode() for i, _ in r.xrange("dlq"))
    assert cli.invoke(app, ["dlq", "retry", first]).exit_code == 0
    assert r.xlen("dlq") == 1
    [(_, fields)] = r.xrange("transcripts", "-", "+")[-1:]
    assert TranscriptMessage.from_fields(fields).segment_id == "seg-0"
    assert cli.invoke(app, ["dlq", "drop", "--all"]).exit_code == 0
    assert r.xlen("dlq") == 0
    assert "no such dead letter" in cli.invoke(app, ["dlq", "drop", second]).output


def test_convo_logs_interleaves_the_services_by_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from services import stack

    def record(t: str, level: str, msg: str) -> str:
        return json.dumps({"t": f"2026-11-29T10:00:{t}+00:00", "level": level, "logger": "x", "msg": msg})

    (tmp_path / "face.log").write_text(
        "\n".join([record("01.000", "INFO", "face one"), record("03.000", "WARNING", "face two")]) + "\n"
    )
    (tmp_path / "memory.log").write_text(
        "\n".join([record("02.000", "ERROR", "memory one"), "Traceback (most recent call last):"]) + "\n"
    )
    monkeypatch.setattr(stack, "LOGS", tmp_path)
    out = CliRunner().invoke(app, ["logs"], terminal_width=200)
    assert out.exit_code == 0, out.output
    order = [
        m
        for line in out.output.splitlines()
        for m in ("face one", "memory one", "Traceback", "face two")
        if m in line
    ]
    assert order == ["face one", "memory one", "Traceback", "face two"], out.output
    one = CliRunner().invoke(app, ["logs", "memory", "-n", "1"], terminal_width=200)
    assert "Traceback" in one.output and "memory one" not in one.output and "face" not in one.output
    missing = CliRunner().invoke(app, ["logs", "overlay"], terminal_width=200)
    assert missing.exit_code != 0 and "face, memory" in missing.output


def test_doctor_says_all_is_set_here(cli: CliRunner) -> None:
    """After `make setup`, on the tests' own Redis (AOF on)."""
    result = cli.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for check in (
        "redis-server",
        "espeak-ng",
        "chromium",
        "whisper tiny.en",
        "buffalo_s",
        "resemblyzer",
        "AOF on",
    ):
        assert check in result.output, check
    assert "all set" in result.output


def test_doctor_names_what_is_missing_and_how_to_fix_it(
    cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server, no espeak-ng on it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("CONVO_OVERLAY__PORT", str(taken.getsockname()[1]))
        result = cli.invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "sudo apt-get install espeak-ng" in out and "sudo apt-get install redis-server" in out
    assert "in use by another program" in out
    assert "2 to fix: redis-server, espeak-ng" in out
