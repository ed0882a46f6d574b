"""Face match latency of the person store with 1k, 10k and 100k persons.

Each match is what the memory service does per face: bring the index up to date with
Redis (one XRANGE on the changes stream) and take the best and runner-up person over
every stored view. Persons are written straight into a private redis-server.
"""

import logging
import sys
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import private_redis, report
from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings
from shared.streams import MemoryKeys

SIZES = [1_000, 10_000, 100_000]
QUERIES = 300


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 512)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(r: redis.Redis, n: int, rng: np.random.Generator) -> None:
    r.flushall()
    vectors = unit(rng, n)
    for start in range(0, n, 5000):
        with r.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + 5000, n)):
                pipe.sadd(MemoryKeys.PERSONS, f"p-{i}")
                pipe.hset(MemoryKeys.faces(f"p-{i}"), "v0", vectors[i].astype("<f4").tobytes())
            pipe.execute()


def main() -> None:
    logging.disable(logging.INFO)
    rng = np.random.default_rng(0)
    figures = {}
    with private_redis() as server:
        r = redis.Redis.from_url(server.url)
        for n in SIZES:
            fill(r, n, rng)
            store = PersonStore(r, MatchSettings())
            start = time.perf_counter()
            store.refresh()
            load_s = time.perf_counter() - start
            queries = unit(rng, QUERIES)
            store.match(queries[0])
            times = []
            for q in queries:
                start = time.perf_counter()
                store.match(q)
                times.append((time.perf_counter() - start) * 1000)
            p50, p99 = np.percentile(times, [50, 99])
            print(
                f"{n:>7} persons: match p50 {p50:.2f} ms, p99 {p99:.2f} ms (index loaded in {load_s:.1f} s)"
            )
            figures[f"p99_ms_{n // 1000}k"] = p99
            figures[f"p50_ms_{n // 1000}k"] = p50
    print(f"p99 grows {figures['p99_ms_100k'] / figures['p99_ms_1k']:.1f}x from 1k to 100k persons")
    report("memory", **{k: v for k, v in figures.items() if k.startswith("p99")})


if __name__ == "__main__":
    main()
