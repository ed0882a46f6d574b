"""The exact top-two face index: every person's views, best and runner-up person for a face.

Each memory replica keeps one, brought up to date from Redis (see ``person_store.py``).
"""

import os
from collections.abc import Collection

import faiss
import numpy as np

from shared.schemas import EMBEDDING_DIM

SCAN_RANGE = 0.25
"""Quantiser range per component; buffalo_s's normed embeddings stay within ±0.17 (measured)."""
FIRST_SCAN = 64
"""Views the first scan returns; enough for an exact answer almost always (bench/memory.py)."""
SCAN_SHARDS = min(4, os.cpu_count() or 1)
"""The scan is split over this many threads."""


class FaceIndex:
    """Every person's views, for the best and runner-up person by max-per-person cosine.

    Two copies: float32 per person, for exact scores, and all views 8-bit quantised in
    faiss, a quarter of the bytes to scan (memory bandwidth is what a scan costs), split
    into shards that are scanned in parallel.
    A quantised score is within ``err`` of the exact one, so the answer stays exact: the
    persons the scan puts near the top are scored exactly, and when a view the scan left
    out could still beat the runner-up, the scan is widened (rarely; all views at most).
    """

    def __init__(self, shards: int = SCAN_SHARDS) -> None:
        self.views: dict[str, np.ndarray] = {}
        self._codecs = [self._quantiser() for _ in range(shards)]
        self._shards = [faiss.IndexIDMap2(codec) for codec in self._codecs]
        self._scan = faiss.IndexShards(EMBEDDING_DIM, True, False)  # one thread per shard
        for shard in self._shards:
            self._scan.add_shard(shard)
        self._placed: dict[str, tuple[int, np.ndarray]] = {}  # person -> shard, view ids
        self._owner: dict[int, str] = {}
        self._next_id = 0
        self.err = 0.0
        """The most a quantised score of any view added so far is off by (a unit query)."""
        self.widened = 0
        """Scans that had to be widened to stay exact."""

    @staticmethod
    def _quantiser() -> faiss.IndexScalarQuantizer:
        codec = faiss.IndexScalarQuantizer(
            EMBEDDING_DIM, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT
        )
        codec.train(np.array([[-SCAN_RANGE] * EMBEDDING_DIM, [SCAN_RANGE] * EMBEDDING_DIM], np.float32))
        return codec

    def update(self, changed: dict[str, np.ndarray | None]) -> None:
        """Replace these persons' views (``None`` or empty: the person has none)."""
        gone = [self._placed.pop(pid) for pid in changed if pid in self._placed]
        for n, shard in enumerate(self._shards):
            ids = [ids for where, ids in gone if where == n]
            if ids:
                shard.remove_ids(np.concatenate(ids))  # one pass over the shard for the whole batch
        for _, ids in gone:
            for i in ids.tolist():
                del self._owner[i]
        sizes = [shard.ntotal for shard in self._shards]
        added: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self._shards]
        for pid, views in changed.items():
            if views is None or len(views) == 0:
                self.views.pop(pid, None)
                continue
            self.views[pid] = np.ascontiguousarray(views, np.float32)
            n = sizes.index(min(sizes))
            sizes[n] += len(views)
            ids = np.arange(self._next_id, self._next_id + len(views), dtype=np.int64)
            self._next_id += len(views)
            self._placed[pid] = (n, ids)
            self._owner.update(dict.fromkeys(ids.tolist(), pid))
            added[n].append((ids, self.views[pid]))
        for shard, codec, batch in zip(self._shards, self._codecs, added, strict=True):
            if batch:
                vectors = np.concatenate([v for _, v in batch])
                shard.add_with_ids(vectors, np.concatenate([i for i, _ in batch]))
                lost = np.linalg.norm(vectors - codec.sa_decode(codec.sa_encode(vectors)), axis=1)
                # a unit query is off by at most |view - decoded|; the rest covers float rounding
                self.err = max(self.err, float(lost.max()) + 1e-4)
        self._scan.syncWithSubIndexes()

    def top_two(self, vector: np.ndarray, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The best two persons not in ``exclude`` with their exact scores, best first."""
        vector = np.ascontiguousarray(vector, np.float32)
        total = self._scan.ntotal
        k = min(FIRST_SCAN, total)
        while k:
            approx, ids = self._scan.search(vector[None], k)
            lead: dict[str, float] = {}  # person -> their best quantised score, best person first
            for a, i in zip(approx[0].tolist(), ids[0].tolist(), strict=True):
                pid = self._owner[i]
                if pid not in exclude:
                    lead.setdefault(pid, a)
            leads = list(lead.values())
            # the two leading persons score at least this exactly; a person the scan puts
            # further below it than err cannot be in the top two
            floor = leads[1] - self.err if len(leads) > 1 else -np.inf
            near = [p for p, a in lead.items() if a + self.err >= floor]
            exact = {p: float((self.views[p] @ vector).max()) for p in near}
            top = sorted(exact.items(), key=lambda kv: -kv[1])[:2]
            unseen = approx[0][-1] + self.err  # no view the scan left out scores more than this
            if k == total or (len(top) == 2 and top[1][1] >= unseen):
                return top
            k = min(k * 8, total)
            self.widened += 1
        return []
