"""Review and correct, as photo libraries let their users: merge suggestions and calibration.

A suggestion is a pair of persons whose best views score above ``suggest_above``: perhaps
one person memory split in two. The wearer merges them ("same") or marks them "different";
each answer is a label, kept with the pair's score at that moment. ``calibrate`` reads
the labels: how many "different" pairs the current threshold would have taken for one
person (false accepts), how many "same" pairs it kept apart (false rejects), and the
threshold that would have made the fewest mistakes, a false accept counting twice (a wrong
name on the glass is worse than none).
"""

import json
from dataclasses import dataclass

import numpy as np
import redis

from services.memory.face_index import FaceIndex
from services.memory.repository import PersonRepository, text
from shared.streams import MemoryKeys

SUGGEST_ABOVE = 0.4
"""Pairs of persons whose best views score at least this are suggested for review; different
people score at most 0.33 with buffalo_s, one person across a flip or crop 0.92 and more."""
FALSE_ACCEPT_COST = 2.0


@dataclass(frozen=True)
class Pair:
    """Two persons and how alike their best views are."""

    a: str
    b: str
    score: float


@dataclass(frozen=True)
class Calibration:
    labels: int
    same: int
    different: int
    threshold: float
    false_accepts: int
    false_rejects: int
    suggested: float
    suggested_false_accepts: int
    suggested_false_rejects: int


def pair_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def best_score(x: np.ndarray | None, y: np.ndarray | None) -> float:
    """The highest cosine between any view of one and any view of the other."""
    if x is None or y is None:
        return 0.0
    return float((x @ y.T).max())


class Review:
    """Suggestions and labels over the person repository."""

    def __init__(self, repo: PersonRepository, threshold: float) -> None:
        self.repo = repo
        self.redis: redis.Redis = repo.redis
        self.threshold = threshold

    def suggestions(self, above: float = SUGGEST_ABOVE, limit: int = 20) -> list[Pair]:
        """Pairs of persons (not candidates) that may be one, most alike first, without labelled ones."""
        people = [p for p in self.repo.person_ids() if not self.repo.get(p).candidate]
        views = {p: self.repo.views(p) for p in people}
        index = FaceIndex()
        index.update(views)
        labelled = set(self.labels())
        found: dict[str, Pair] = {}
        for pid, mine in views.items():
            for vector in mine if mine is not None else []:
                for other, score in index.top_two(vector, exclude={pid})[:1]:
                    key = pair_key(pid, other)
                    if (
                        score >= above
                        and key not in labelled
                        and score > getattr(found.get(key), "score", -1)
                    ):
                        found[key] = Pair(*sorted((pid, other)), score=score)
        return sorted(found.values(), key=lambda p: -p.score)[:limit]

    def label(self, a: str, b: str, same: bool) -> None:
        """Record the wearer's answer for a pair, with how alike they are now (before any merge)."""
        score = best_score(self.repo.views(a), self.repo.views(b))
        entry = {"same": same, "score": score}
        self.redis.hset(MemoryKeys.LABELS, pair_key(a, b), json.dumps(entry))

    def labels(self) -> dict[str, dict]:
        return {text(k): json.loads(v) for k, v in self.redis.hgetall(MemoryKeys.LABELS).items()}

    def calibrate(self) -> Calibration:
        labels = list(self.labels().values())
        same = [x["score"] for x in labels if x["same"]]
        different = [x["score"] for x in labels if not x["same"]]

        def errors(t: float) -> tuple[int, int]:
            return sum(s >= t for s in different), sum(s < t for s in same)

        def cost(t: float) -> tuple[float, float]:
            accepts, rejects = errors(t)
            return FALSE_ACCEPT_COST * accepts + rejects, abs(t - self.threshold)  # ties: the nearest

        best = min(sorted({round(float(t), 2) for t in np.arange(0.2, 0.9, 0.01)}), key=cost)
        now, then = errors(self.threshold), errors(best)
        return Calibration(
            labels=len(labels), same=len(same), different=len(different), threshold=self.threshold,
            false_accepts=now[0], false_rejects=now[1], suggested=best,
            suggested_false_accepts=then[0], suggested_false_rejects=then[1],
        )  # fmt: skip
