"""The ``convo`` CLI against a real redis-server."""

import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, TranscriptMessage, dead_letter
from shared.settings import ServiceSettings
from tests.shared.test_consumer import echo, publish


@pytest.fixture
def cli(settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CONVO_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_status_shows_each_stage_alive_pending_lag_dead_letters_and_rate(
    r: redis.Redis, cli: CliRunner, settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from shared.streams import heartbeat_key

    monkeypatch.setenv("COLUMNS", "100")
    publish(r, 6)
    r.xgroup_create("transcripts", "memory", id="0")
    r.xgroup_create("transcripts", "trainer", id="0")
    r.xreadgroup("memory", "mem-1", {"transcripts": ">"}, count=4)  # 4 pending, lag 2
    r.set(heartbeat_key("memory", "host-1"), "1", ex=30)  # one live consumer
    publish(r, 2, start=100, text="poison")
    r.xgroup_create("transcripts", "echo", id="0")
    Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)  # 2 dead letters
    publish(r, 200, start=1000)

    def trainer_reads() -> None:  # 200 entries read during the sampling window
        time.sleep(0.3)
        r.xreadgroup("trainer", "t-1", {"transcripts": ">"}, count=10_000)

    reader = threading.Thread(target=trainer_reads)
    reader.start()
    result = cli.invoke(app, ["status", "--every", "1.5"])
    reader.join()
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 100, "fits 100 columns"
    rows = {
        c[0]: c for line in result.output.splitlines() if (c := [x.strip() for x in line.split("│")[1:-1]])
    }
    assert rows["memory"][:6] == ["memory", "transcripts", "1", "4", "204", "0"]
    assert rows["echo"][:6] == ["echo", "transcripts", "1", "0", "200", "2"]  # its heartbeat is fresh
    trainer = rows["trainer"]
    assert trainer[2:6] == ["0", "208", "0", "0"] and float(trainer[6]) > 100, trainer
    assert "transcripts 208" in " ".join(result.output.split())


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


def test_a_letter_from_no_stream_is_listed_and_kept_on_retry(r: redis.Redis, cli: CliRunner) -> None:
    """Capture files a recording or a mic it cannot read: there is no stream to put it back on."""
    r.xadd("dlq", dead_letter("capture", "mic", "cannot open the microphone", {"session": "s1"}))
    listing = cli.invoke(app, ["dlq", "list"])
    assert listing.exit_code == 0 and "cannot open the microphone" in listing.output, listing.output
    retried = cli.invoke(app, ["dlq", "retry", "--all"])
    assert retried.exit_code == 0 and "not a stream" in retried.output and r.xlen("dlq") == 1
    assert not r.exists("capture"), "nothing was written to a stream named after the source"


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


def test_no_redis_is_a_plain_answer_not_a_traceback() -> None:
    import os
    import subprocess
    import sys

    from shared.redis_server import free_port

    env = {**os.environ, "CONVO_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    convo = Path(sys.executable).with_name("convo")
    done = subprocess.run([str(convo), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no Redis answers on" in done.stdout and "make run" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
