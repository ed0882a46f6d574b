"""Review and correct: merge suggestions on the people page, "different people", and calibrate on
the wearer's own answers."""

import numpy as np
import redis
from playwright.sync_api import Page
from typer.testing import CliRunner

from services.memory.person_store import PersonStore
from services.memory.repository import PersonRepository
from services.memory.suggest import Review
from tests.overlay.conftest import Overlay


def split_sarah(store: PersonStore, embeddings: dict[str, np.ndarray]) -> tuple[str, str, str, str]:
    """Sarah twice (her photo and its mirror in one frame, so memory made two persons), Tom and Lee."""
    sarah = store.identify(embeddings["astronaut"], frame_id="f1", face_id="f1:0").person_id
    twin = store.identify(embeddings["astronaut-flipped"], frame_id="f1", face_id="f1:1").person_id
    tom = store.identify(embeddings["t1-0"]).person_id
    lee = store.identify(embeddings["t1-1"]).person_id
    assert sarah and twin and tom and lee and len({sarah, twin, tom, lee}) == 4
    store.repo.rename(sarah, "Sarah Chen")
    return sarah, twin, tom, lee


def test_the_merge_suggestion_and_calibrate_on_labelled_persons(
    r: redis.Redis,
    overlay: Overlay,
    page: Page,
    store: PersonStore,
    embeddings: dict[str, np.ndarray],
) -> None:
    sarah, twin, tom, lee = split_sarah(store, embeddings)
    page.goto(f"{overlay.url}/people#token={overlay.token}")
    page.wait_for_selector(".suggestion")
    assert page.locator(".suggestion").count() == 1, "only the one person split in two is suggested"
    assert "Same person? " in page.text_content(".suggestion .sub")  # type: ignore[operator]
    page.click(".suggestion button.merge")
    page.wait_for_selector(".suggestion", state="detached")
    [kept] = {sarah, twin} & set(store.person_ids())  # one of the two took the other in
    assert store.profile(kept).views == 2 and store.profile(kept).name == "Sarah Chen"
    headers = {"Authorization": f"Bearer {overlay.token}"}
    import httpx

    res = httpx.post(f"{overlay.url}/api/people/{tom}/different", json={"other": lee}, headers=headers)
    assert res.status_code == 200
    labels = Review(PersonRepository(r), 0.45).labels()
    assert sorted(x["same"] for x in labels.values()) == [False, True]
    same = next(x["score"] for x in labels.values() if x["same"])
    assert same > 0.9

    good = Review(PersonRepository(r), 0.45).calibrate()
    assert (good.labels, good.false_accepts, good.false_rejects) == (2, 0, 0)
    strict = Review(PersonRepository(r), 0.97).calibrate()  # a threshold that split Sarah in two
    assert strict.false_rejects == 1 and strict.suggested <= same and strict.suggested_false_rejects == 0


def test_convo_calibrate_and_suggest(r: redis.Redis, store: PersonStore, embeddings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from services.cli import app

    split_sarah(store, embeddings)
    url = r.connection_pool.connection_kwargs
    monkeypatch.setenv("CONVO_REDIS_URL", f"redis://{url['host']}:{url['port']}/0")
    out = CliRunner().invoke(app, ["person", "suggest"])
    assert out.exit_code == 0 and "Sarah Chen" in out.output, out.output
    out = CliRunner().invoke(app, ["calibrate"])
    assert out.exit_code == 0 and "0 answers" in out.output
