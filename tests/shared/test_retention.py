"""Retention: the window on raw streams and the caps never remove what a group still needs."""

import time

import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from shared.retention import gc, trim_window
from shared.settings import ServiceSettings


def old_entries(r: redis.Redis, stream: str, n: int, age_s: float) -> list[bytes]:
    """``n`` entries written ``age_s`` ago (explicit ids carry the time)."""
    ms = int((time.time() - age_s) * 1000)
    return [r.xadd(stream, {"i": str(i)}, id=f"{ms}-{i}") for i in range(n)]


def test_the_window_removes_old_acked_entries_and_keeps_what_a_group_has_not_acked(r: redis.Redis) -> None:
    old = old_entries(r, "audio:segments", 10, age_s=7200)
    fresh = r.xadd("audio:segments", {"i": "new"})
    r.xgroup_create("audio:segments", "transcriber", id="0")
    r.xreadgroup("transcriber", "t1", {"audio:segments": ">"}, count=6)
    r.xack("audio:segments", "transcriber", *old[:4])  # 4 acked, 2 pending, 4 not yet read
    result = trim_window(r, "audio:segments", max_age_s=3600)
    assert (result.removed, result.held_by) == (4, ("transcriber",))
    assert [e for e, _ in r.xrange("audio:segments")] == [*old[4:], fresh]
    r.xreadgroup("transcriber", "t1", {"audio:segments": ">"})
    r.xack("audio:segments", "transcriber", *old[4:], fresh)
    result = trim_window(r, "audio:segments", max_age_s=3600)
    assert (result.removed, result.held_by) == (6, ())
    assert [e for e, _ in r.xrange("audio:segments")] == [fresh], "young entries stay"


def test_gc_caps_the_other_streams_and_reports_per_stream(r: redis.Redis, settings: ServiceSettings) -> None:
    settings = settings.model_copy(update={"caps": settings.caps.model_copy(update={"transcripts": 5})})
    ids = [r.xadd("transcripts", {"i": str(i)}) for i in range(12)]
    r.xgroup_create("transcripts", "memory", id=ids[2])  # has read up to the third
    report = {t.stream: t for t in gc(r, settings, window_s=3600)}
    assert report["transcripts"].removed == 3 and report["transcripts"].held_by == ("memory",)
    assert r.xlen("transcripts") == 9, "the entries memory has not read stay, over the cap"
    r.xgroup_setid("transcripts", "memory", id=ids[-1])
    assert {t.stream: t.removed for t in gc(r, settings, window_s=3600)}["transcripts"] == 4
    assert r.xlen("transcripts") == 5


def test_convo_gc_prints_what_it_trimmed(
    r: redis.Redis, settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVO_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("COLUMNS", "200")
    old_entries(r, "frames", 7, age_s=600)
    result = CliRunner().invoke(app, ["gc", "--raw-s", "60"])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.output.splitlines() if line.startswith("│ frames")]
    assert [c.strip() for c in row.split("│")[1:5]] == ["frames", "7", "7", "0"]
    assert "removed 7 entries" in result.output and r.xlen("frames") == 0
