"""N messages through the shared consumer loop against a bare redis-py XREADGROUP/XACK loop.

Both read the same entries in batches of 16, turn each transcript into a recall entry
and ack it; the shared loop also parses and validates each entry, records it as done
and writes everything in one Lua call. The two loops take turns, ROUNDS times each, and the
ratio is the median of the rounds' ratios: a round trip to Redis on a small VM varies by half,
and drifts within a run, so each shared round is set against the raw round just before it.
"""

import logging
import statistics
import sys
import time

import redis

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from bench._common import bench_settings, private_redis, report
from shared.consumer import Consumer
from shared.schemas import RecallMessage, TranscriptMessage
from shared.settings import ServiceSettings

N = 5000
ROUNDS = 7


def transcript(i: int) -> TranscriptMessage:
    return TranscriptMessage(
        segment_id=f"seg-{i}", session="s", t_start=0.0, t_end=1.0, text="hello there",
        language="en", confidence=0.9, model="bench",
    )  # fmt: skip


def echo(msg: TranscriptMessage) -> list[RecallMessage]:
    return [
        RecallMessage(recall_id=msg.segment_id, person_id="p", name=msg.text, summary="", similarity=1, t=0)
    ]


def fill(r: redis.Redis, stream: str) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd(stream, transcript(i).to_fields())
    pipe.execute()


def raw_loop(r: redis.Redis, stream: str, out: str) -> float:
    r.xgroup_create(stream, "raw", id="0")
    start = time.perf_counter()
    while True:
        reply = r.xreadgroup("raw", "bench", {stream: ">"}, count=16)
        if not reply:
            break
        [(_, entries)] = reply
        pipe = r.pipeline(transaction=False)
        for _, fields in entries:
            # The same output entry the shared loop writes, built by hand.
            pipe.xadd(
                out,
                {
                    "v": "1", "recall_id": fields[b"segment_id"], "person_id": "p", "name": fields[b"text"],
                    "summary": "", "similarity": "1", "t": "0",
                },
                maxlen=10_000, approximate=True,
            )  # fmt: skip
        pipe.xack(stream, "raw", *[entry_id for entry_id, _ in entries])
        pipe.execute()
    return time.perf_counter() - start


def shared_loop(r: redis.Redis, settings: ServiceSettings) -> float:
    start = time.perf_counter()
    stats = Consumer(r, settings, "bench", {TranscriptMessage: echo}).run(burst=True)
    elapsed = time.perf_counter() - start
    assert stats.processed == N
    return elapsed


def main() -> None:
    logging.disable(logging.INFO)  # the loop's per-message log line would time the terminal
    raw_s: list[float] = []
    loop_s: list[float] = []
    with private_redis() as server:
        r = redis.Redis.from_url(server.url)
        for _ in range(ROUNDS):
            r.flushall()
            fill(r, "raw-in")
            raw_s.append(raw_loop(r, "raw-in", "raw-out"))
            fill(r, "transcripts")
            loop_s.append(shared_loop(r, bench_settings(server)))
            assert r.xlen("recalls") == N and r.xlen("raw-out") == N
    ratio = statistics.median(r / s for r, s in zip(raw_s, loop_s, strict=True))
    raw, loop = statistics.median(raw_s), statistics.median(loop_s)
    print(
        f"{N} messages x {ROUNDS}: raw loop {N / raw:,.0f} msg/s, shared loop {N / loop:,.0f} msg/s (medians)"
    )
    overhead_us = (loop - raw) / N * 1e6
    print(f"the shared loop's parse, validation and idempotency record cost {overhead_us:.0f} us per message")
    report(
        "bus", ratio_vs_raw=ratio, msgs_per_s=N / loop, raw_msgs_per_s=N / raw,
        overhead_us_per_msg=overhead_us,
    )  # fmt: skip


if __name__ == "__main__":
    main()
