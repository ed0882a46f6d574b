"""The shared loop on a real redis-server: delivery, retries, dead letters, crashes, restarts."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from shared.consumer import Consumer
from shared.redis_server import RedisServer
from shared.schemas import TranscriptMessage
from shared.settings import ConsumerSettings, ServiceSettings
from tests.shared.echo_worker import echo

WORKER = Path(__file__).with_name("echo_worker.py")
REPO = Path(__file__).parents[2]


def transcript(i: int | str, text: str = "hello") -> TranscriptMessage:
    return TranscriptMessage(
        segment_id=f"seg-{i}", session="s", t_start=0.0, t_end=1.0, text=text,
        language="en", confidence=0.9, model="test",
    )  # fmt: skip


def publish(r: redis.Redis, n: int, start: int = 0, text: str = "hello") -> None:
    for i in range(start, start + n):
        r.xadd("transcripts", transcript(i, text).to_fields())


def recalls(r: redis.Redis) -> list[str]:
    return [fields[b"recall_id"].decode() for _, fields in r.xrange("recalls")]


def pending(r: redis.Redis, group: str = "echo") -> int:
    return r.xpending("transcripts", group)["pending"]


def test_burst_handles_everything_and_acks(r: redis.Redis, settings: ServiceSettings) -> None:
    publish(r, 40)
    stats = Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert stats.processed == 40
    assert sorted(recalls(r)) == sorted(f"seg-{i}" for i in range(40))
    assert pending(r) == 0


def test_group_created_at_zero_keeps_the_backlog(r: redis.Redis, settings: ServiceSettings) -> None:
    publish(r, 5)  # written before any group exists
    assert Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True).processed == 5


def test_same_message_twice_gives_one_output(r: redis.Redis, settings: ServiceSettings) -> None:
    publish(r, 3)
    publish(r, 3)  # a writer retried: same segment ids, new entries
    stats = Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert (stats.processed, stats.duplicates) == (3, 3)
    assert sorted(recalls(r)) == ["seg-0", "seg-1", "seg-2"]


def test_two_streams_may_share_ids(r: redis.Redis, settings: ServiceSettings) -> None:
    """A segment's transcript and its voice carry the same segment id: both are handled, and
    neither is taken for a repeat of the other."""
    import numpy as np

    from shared.schemas import RecallMessage, VoiceMessage, embedding_to_bytes

    vector = np.zeros(256, np.float32)
    vector[0] = 1.0
    voice = VoiceMessage(
        segment_id="seg-0", session="s", t_start=0.0, t_end=1.0, embedding=embedding_to_bytes(vector),
        speech_s=1.0, model="test",
    )  # fmt: skip
    r.xadd("voices", voice.to_fields())
    publish(r, 1)

    def voiced(msg: VoiceMessage) -> list[RecallMessage]:
        return [echo(transcript("voice-of-" + msg.segment_id))[0]]

    stats = Consumer(r, settings, "echo", {TranscriptMessage: echo, VoiceMessage: voiced}).run(burst=True)
    assert (stats.processed, stats.duplicates) == (2, 0)
    assert sorted(recalls(r)) == ["seg-0", "seg-voice-of-seg-0"]


def test_poison_reaches_dlq_while_others_flow(
    r: redis.Redis, settings: ServiceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    publish(r, 5, 0)
    r.xadd("transcripts", transcript("bad", "poison").to_fields())
    publish(r, 5, 5)
    stats = Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert stats.processed == 10
    assert stats.failed == 2 and stats.dead_lettered == 1  # two retries, then the third delivery gives up
    [(_, letter)] = r.xrange("dlq")
    assert letter[b"stream"] == b"transcripts"
    assert letter[b"group"] == b"echo"
    assert letter[b"deliveries"] == b"3"
    assert b"RuntimeError: poison entry" in letter[b"error"]
    assert letter[b"f.segment_id"] == b"seg-bad"
    assert pending(r) == 0
    assert "outcome=dlq" in caplog.text


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"v": "1", "segment_id": "x"}, "Field required"),
        ({**transcript(0).to_fields(), "confidence": "high"}, "valid number"),
        ({**transcript(0).to_fields(), "v": "9"}, "unknown schema version"),
        ({**transcript(0).to_fields(), "text": "x" * 5000}, "over the limit"),
    ],
    ids=["missing-field", "wrong-type", "unknown-v", "oversized"],
)
def test_bad_entry_goes_to_dlq_at_once_with_a_logged_error(
    r: redis.Redis,
    settings: ServiceSettings,
    caplog: pytest.LogCaptureFixture,
    fields: dict,
    error: str,
) -> None:
    settings = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"max_field_bytes": 4096})}
    )
    r.xadd("transcripts", fields)
    publish(r, 2)
    with caplog.at_level(logging.ERROR):
        stats = Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert (stats.processed, stats.dead_lettered, stats.failed) == (2, 1, 0)
    [(_, letter)] = r.xrange("dlq")
    assert error in letter[b"error"].decode()
    assert error in caplog.text and "outcome=dlq" in caplog.text


def run_worker(settings: ServiceSettings, delay_s: float, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "CONVO_REDIS_URL": settings.redis_url,
        "CONVO_CONSUMER__BATCH_SIZE": "10",
        "CONVO_CONSUMER__CLAIM_IDLE_MS": "300",
        "CONVO_CONSUMER__CLAIM_EVERY_S": "0.1",
        "ECHO_DELAY_S": str(delay_s),
    }
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_sigkill_mid_batch_is_reclaimed_without_loss_or_duplicates(
    r: redis.Redis, settings: ServiceSettings
) -> None:
    publish(r, 30)
    worker = run_worker(settings, 0.2)
    # One batch of 10 committed, the next one read and in hand: kill it there.
    wait_for(lambda: len(recalls(r)) >= 10 and pending(r) > 0)
    worker.kill()
    worker.wait()
    assert len(recalls(r)) < 30 and pending(r) > 0, "the killed worker held unacked entries"
    stats = Consumer(r, settings, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert stats.reclaimed > 0
    out = recalls(r)
    assert sorted(out) == sorted(f"seg-{i}" for i in range(30)), "every entry once, none twice"
    assert pending(r) == 0


def test_sigterm_finishes_the_message_in_hand_and_exits_zero(
    r: redis.Redis, settings: ServiceSettings
) -> None:
    publish(r, 10)
    worker = run_worker(settings, 0.5)
    assert worker.stdout is not None
    line = worker.stdout.readline()
    while not line.startswith("handling"):
        line = worker.stdout.readline()
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, output
    in_hand = line.split()[1]
    assert in_hand in recalls(r), "the message in hand was finished and published"
    acked = 10 - pending(r)
    assert acked == len(recalls(r)) >= 1, "exactly the published messages were acked"
    assert pending(r) > 0, "the rest of the batch was left for other replicas"


def test_entries_read_ahead_at_a_stop_are_handed_back_at_once(
    r: redis.Redis, settings: ServiceSettings
) -> None:
    """The next batch is read in the round trip of a commit. A stop that comes after that read
    leaves those entries unhandled: they are made claimable by any replica at once, with no
    delivery counted, rather than after ``claim_idle_ms`` in the stopped consumer's list."""
    slow = settings.model_copy(
        update={"consumer": settings.consumer.model_copy(update={"claim_idle_ms": 60_000})}
    )
    batch = slow.consumer.batch_size
    publish(r, 3 * batch)
    first = Consumer(r, slow, "echo", {TranscriptMessage: echo})
    first.committed = lambda outputs: first.stop.set()
    assert first.run().processed == batch
    ahead = r.xpending_range("transcripts", "echo", "-", "+", 10 * batch)
    assert len(ahead) == batch, "the second batch was read with the first one's commit"
    assert all(p["time_since_delivered"] >= 60_000 and p["times_delivered"] == 0 for p in ahead), ahead
    other = slow.model_copy(update={"consumer_name": "other"})
    stats = Consumer(r, other, "echo", {TranscriptMessage: echo}).run(burst=True)
    assert (stats.reclaimed, stats.processed, stats.dead_lettered) == (batch, 2 * batch, 0)
    assert sorted(recalls(r)) == sorted(f"seg-{i}" for i in range(3 * batch)), "every entry once"


def test_reconnects_after_redis_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        settings = ServiceSettings(
            redis_url=server.url, consumer_name="c",
            consumer=ConsumerSettings(block_ms=100, backoff_max_s=0.5),
        )  # fmt: skip
        client = redis.Redis.from_url(server.url)
        publish(client, 5)
        consumer = Consumer(redis.Redis.from_url(server.url), settings, "echo", {TranscriptMessage: echo})
        thread = threading.Thread(target=consumer.run)
        thread.start()
        try:
            wait_for(lambda: len(recalls(client)) == 5)
            server.restart()  # AOF keeps the streams and the group
            publish(client, 5, start=5)
            wait_for(lambda: len(recalls(client)) == 10)
            assert thread.is_alive()
        finally:
            consumer.stop.set()
            thread.join(10)
        assert sorted(recalls(client)) == sorted(f"seg-{i}" for i in range(10))
