"""The wearer's own voice: enrolled once (``convo wearer enroll``), then every segment whose
voice matches it is a line the wearer said ("me"), and every other one the other person's
("them"). Nothing is marked while no voice is enrolled."""

import time
import uuid

import numpy as np
import redis

from shared.schemas import VOICE_DIM, embedding_from_bytes, embedding_to_bytes
from shared.streams import MemoryKeys

ME, THEM = "me", "them"


class Wearer:
    def __init__(self, client: redis.Redis, threshold: float, cache_s: float = 5.0) -> None:
        self.redis = client
        self.threshold = threshold
        self.cache_s = cache_s
        self._views: np.ndarray | None = None
        self._read_at = float("-inf")

    def enroll(self, vectors: list[np.ndarray]) -> int:
        """Add voice views (normed embeddings of the wearer's speech); returns how many there are."""
        for vector in vectors:
            embedding_from_bytes(embedding_to_bytes(vector), VOICE_DIM)  # size, finite, normed
        with self.redis.pipeline() as pipe:
            for vector in vectors:
                pipe.hset(MemoryKeys.WEARER_VOICE, f"v-{uuid.uuid4().hex[:12]}", embedding_to_bytes(vector))
            pipe.hlen(MemoryKeys.WEARER_VOICE)
            *_, count = pipe.execute()
        self._read_at = float("-inf")
        return int(count)

    def forget(self) -> int:
        """Remove the enrolled voice; returns how many views went."""
        count = int(self.redis.hlen(MemoryKeys.WEARER_VOICE))
        self.redis.delete(MemoryKeys.WEARER_VOICE)
        self._read_at = float("-inf")
        return count

    def views(self) -> np.ndarray | None:
        """The enrolled views as rows, re-read every ``cache_s`` (an enrolment reaches every replica)."""
        if time.monotonic() - self._read_at > self.cache_s:
            raw = self.redis.hvals(MemoryKeys.WEARER_VOICE)
            self._views = np.stack([np.frombuffer(v, "<f4") for v in raw]) if raw else None
            self._read_at = time.monotonic()
        return self._views

    def speaker(self, vector: np.ndarray) -> tuple[str, float]:
        """``me`` or ``them`` with the best score against the wearer's views; ``""`` with none enrolled."""
        views = self.views()
        if views is None:
            return "", 0.0
        score = float((views @ vector).max())
        return (ME if score >= self.threshold else THEM), score
