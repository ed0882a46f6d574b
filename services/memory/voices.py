"""What known persons sound like: their voice views, matched against the other person's lines.

A person gets voice views only from lines the wearer's enrolled voice marked ``them`` in their
own conversations, so the wearer's voice never becomes anyone else's. The index is a matrix of
every voice view, re-read when any person's views change (``convo:persons:voices:version``).
"""

from collections.abc import Collection, Mapping

import numpy as np
import redis

from services.memory.repository import text
from services.memory.settings import VoiceMatchSettings
from shared.streams import MemoryKeys


class VoiceIndex:
    def __init__(self, client: redis.Redis, settings: VoiceMatchSettings) -> None:
        self.redis = client
        self.settings = settings
        self._version: bytes | None = None
        self._owners: list[str] = []
        self._matrix = np.zeros((0, 0), np.float32)

    def refresh(self) -> None:
        version = self.redis.get(MemoryKeys.VOICES_VERSION) or b"0"
        if version == self._version:
            return
        owners, rows = [], []
        for pid in sorted(text(p) for p in self.redis.smembers(MemoryKeys.VOICED)):
            for data in self.redis.hvals(MemoryKeys.voices(pid)):
                owners.append(pid)
                rows.append(np.frombuffer(data, "<f4"))
        self._owners, self._version = owners, version
        self._matrix = np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def match(self, vector: np.ndarray, exclude: Collection[str] = ()) -> tuple[str | None, float]:
        """The known person this voice is, over the threshold and the margin; else (None, best)."""
        self.refresh()
        if not len(self._matrix):
            return None, 0.0
        scores = self._matrix @ vector
        best: dict[str, float] = {}
        for pid, score in zip(self._owners, scores.tolist(), strict=True):
            if pid not in exclude and score > best.get(pid, -1.0):
                best[pid] = score
        return decide(best, self.settings.person_threshold, self.settings.margin)


def decide(best: Mapping[str, float], threshold: float, margin: float) -> tuple[str | None, float]:
    """Whose voice it is, from each person's best score: the top one when it reaches ``threshold``
    and beats the runner-up by ``margin``; else ``None``. Returns the top score either way."""
    ranked = sorted(best.items(), key=lambda kv: -kv[1])
    if not ranked:
        return None, 0.0
    pid, score = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    if score < threshold or score - runner_up < margin:
        return None, score
    return pid, score


def one_voice(prints: Mapping[str, np.ndarray], same: float) -> set[str]:
    """The lines of a conversation's other side that are one voice: those that score ``same``
    against the line most like the others, when they are more than half of the lines. When the
    voices split evenly (two people, a line each), it is not known whose is whose: none."""
    if len(prints) < 2:
        return set(prints)
    ids = list(prints)
    vectors = np.stack([prints[i] for i in ids])
    scores = vectors @ vectors.T
    centre = int(np.argmax(scores.sum(axis=1)))
    agree = {i for i, score in zip(ids, scores[centre].tolist(), strict=True) if score >= same}
    return agree if 2 * len(agree) > len(ids) else set()
