"""The face index gives exactly what a brute-force product over every view gives."""

from collections.abc import Collection

import numpy as np
import pytest

from services.memory.face_index import FIRST_SCAN, FaceIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute_force(views: dict[str, np.ndarray], q: np.ndarray, exclude: set[str]) -> list[tuple[str, float]]:
    scores = {p: float((v @ q).max()) for p, v in views.items() if p not in exclude}
    return sorted(scores.items(), key=lambda kv: -kv[1])[:2]


def near(q: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` to ``q``."""
    n = rng.standard_normal(q.shape).astype(np.float32)
    n = unit(n - (n @ q) * q)
    return unit(cos * q + np.sqrt(1 - cos * cos) * n)


def assert_same(index: FaceIndex, q: np.ndarray, exclude: Collection[str] = ()) -> None:
    got = index.top_two(q, exclude)
    want = brute_force(index.views, q, set(exclude))
    assert [round(s, 5) for _, s in got] == [round(s, 5) for _, s in want]
    if len(want) < 2 or want[0][1] - want[1][1] > 1e-6:  # no tie: the best person is the same one
        assert got[0][0] == want[0][0]


def test_random_queries_and_near_copies_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    views = {f"p{i}": unit(rng.standard_normal((1 + i % 5, 512))) for i in range(3000)}
    index = FaceIndex()
    index.update(views)
    assert index._scan.ntotal == sum(len(v) for v in views.values())
    for _ in range(100):
        assert_same(index, unit(rng.standard_normal(512)))
    for i in range(100):  # a stored face seen again, well or badly
        target = views[f"p{i * 29}"][0]
        assert_same(index, near(target, 0.4 + 0.005 * i, rng))
    for i in range(20):  # two persons nearly tied for a face
        q = unit(rng.standard_normal(512))
        index.update({"twin-a": near(q, 0.7, rng)[None], "twin-b": near(q, 0.7 - 0.002 * i, rng)[None]})
        assert_same(index, q)
        assert {p for p, _ in index.top_two(q)} == {"twin-a", "twin-b"}


def test_a_crowd_just_below_the_runner_up_widens_the_scan_and_stays_exact() -> None:
    """More views within the quantisation error of the runner-up than the first scan returns."""
    rng = np.random.default_rng(2)
    q = unit(rng.standard_normal(512))
    crowd = {f"c{i}": near(q, 0.3 + rng.uniform(-0.005, 0.005), rng)[None] for i in range(FIRST_SCAN * 4)}
    index = FaceIndex()
    index.update(crowd | {"best": near(q, 0.9, rng)[None]})
    assert_same(index, q)
    assert index.widened >= 1


def test_excluded_persons_are_skipped_even_when_they_fill_the_scan() -> None:
    rng = np.random.default_rng(3)
    q = unit(rng.standard_normal(512))
    views = {f"x{i}": np.stack([near(q, 0.8, rng) for _ in range(12)]) for i in range(8)}  # 96 views
    views |= {f"o{i}": unit(rng.standard_normal((1, 512))) for i in range(500)}
    index = FaceIndex()
    index.update(views)
    taken = {f"x{i}" for i in range(8)}
    assert_same(index, q, taken)
    assert not {p for p, _ in index.top_two(q, taken)} & taken


def test_updates_and_removals_keep_the_index_in_step() -> None:
    rng = np.random.default_rng(4)
    views = {f"p{i}": unit(rng.standard_normal((3, 512))) for i in range(400)}
    index = FaceIndex()
    index.update(views)
    target = views["p7"][1]
    index.update({"p7": None, "p8": np.concatenate([views["p8"], target[None]]), "p9": views["p9"][:1]})
    assert "p7" not in index.views
    assert index._scan.ntotal == 3 * 400 - 3 + 1 - 2
    assert index.top_two(target)[0] == ("p8", pytest.approx(1.0, abs=1e-5))
    assert_same(index, target)
    index.update({f"p{i}": None for i in range(400)})
    assert index._scan.ntotal == 0
    assert index.top_two(target) == []


def test_a_view_outside_the_quantiser_range_widens_the_error_bound_not_the_answer() -> None:
    rng = np.random.default_rng(5)
    index = FaceIndex()
    index.update({f"p{i}": unit(rng.standard_normal((1, 512))) for i in range(300)})
    normal = index.err
    spike = np.zeros(512, np.float32)
    spike[0] = 1.0  # a one-hot "embedding": far outside what a face gives
    index.update({"spike": spike[None]})
    assert index.err > 10 * normal
    for q in [spike, near(spike, 0.5, rng), unit(rng.standard_normal(512))]:
        assert_same(index, q)
