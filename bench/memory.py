"""Face match latency of the person store with 1k, 10k and 100k persons, against brute force.

Each match is what the memory service does per face: bring the index up to date with
Redis (one XRANGE on the changes stream), then find the best and runner-up person. The
raw figure is numpy doing the same work by brute force on the same views: the product
with every view, best view per person, top two. Both answers are compared, query by
query: the store's 8-bit scan must give exactly the brute-force persons and scores.
Half the queries are unknown faces, half stored faces seen again (cosine 0.5 to 0.95).
Persons are written straight into a private redis-server.
"""

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import private_redis, report
from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings
from shared.streams import MemoryKeys

SIZES = [1_000, 10_000, 100_000]
T = TypeVar("T")
QUERIES = 400


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def queries(rng: np.random.Generator, stored: np.ndarray) -> np.ndarray:
    """Unknown faces and stored faces seen again, interleaved."""
    out = unit(rng.standard_normal((QUERIES, 512)))
    for i in range(1, QUERIES, 2):
        target = stored[rng.integers(len(stored))]
        noise = unit(out[i] - (out[i] @ target) * target)
        cos = rng.uniform(0.5, 0.95)
        out[i] = unit(cos * target + np.sqrt(1 - cos * cos) * noise)
    return out


def fill(r: redis.Redis, vectors: np.ndarray) -> None:
    r.flushall()
    for start in range(0, len(vectors), 5000):
        with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 5000, len(vectors))):
                pipe.sadd(MemoryKeys.PERSONS, f"p-{i}")
                pipe.hset(MemoryKeys.faces(f"p-{i}"), "v0", vectors[i].astype("<f4").tobytes())
            pipe.execute()


def brute_force(matrix: np.ndarray, q: np.ndarray) -> tuple[int, float, float]:
    """One view per person here, so a person's score is their view's."""
    scores = matrix @ q
    top = np.argpartition(scores, -2)[-2:]
    best, second = top[np.argsort(-scores[top])]
    return int(best), float(scores[best]), float(scores[second])


def timed(fn: Callable[[np.ndarray], T], qs: np.ndarray) -> tuple[list[float], list[T]]:
    fn(qs[0])
    times, answers = [], []
    for q in qs:
        start = time.perf_counter()
        answers.append(fn(q))
        times.append((time.perf_counter() - start) * 1000)
    return times, answers


def main() -> None:
    logging.disable(logging.INFO)
    rng = np.random.default_rng(0)
    figures: dict[str, float] = {}
    ratios: dict[str, float] = {}
    with private_redis() as server:
        r = redis.Redis.from_url(server.url)
        for n in SIZES:
            vectors = unit(rng.standard_normal((n, 512)))
            fill(r, vectors)
            store = PersonStore(r, MatchSettings())
            start = time.perf_counter()
            store.refresh()
            load_s = time.perf_counter() - start
            qs = queries(rng, vectors)
            store_ms, matches = timed(store.match, qs)
            raw_ms, raws = timed(lambda q, m=vectors: brute_force(m, q), qs)
            differ = sum(
                abs(m.score - best) > 1e-5
                or abs(m.runner_up - second) > 1e-5
                or m.person_id not in (None, f"p-{i}")
                for m, (i, best, second) in zip(matches, raws, strict=True)
            )
            known = sum(m.outcome == "match" for m in matches)
            p50, p99 = np.percentile(store_ms, [50, 99])
            raw50, raw99 = np.percentile(raw_ms, [50, 99])
            print(
                f"{n:>7} persons: match p50 {p50:.2f} ms, p99 {p99:.2f} ms; brute force p50 {raw50:.2f} ms,"
                f" p99 {raw99:.2f} ms; ratio p99 {p99 / raw99:.2f}; {known} of {QUERIES} matched,"
                f" {differ} answers differ from brute force, {store.index.widened} scans widened"
                f" (index loaded in {load_s:.1f} s)"
            )
            if differ:
                raise SystemExit(f"{differ} matches differ from brute force at {n} persons")
            figures[f"p99_ms_{n // 1000}k"] = p99
            ratios[f"{n // 1000}k"] = p99 / raw99
    print(f"p99 grows {figures['p99_ms_100k'] / figures['p99_ms_1k']:.1f}x from 1k to 100k persons")
    print("ratio p99 match / brute force: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    report("memory", ratio_p99_100k=ratios["100k"], **figures)


if __name__ == "__main__":
    main()
