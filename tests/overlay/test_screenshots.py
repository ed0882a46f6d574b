"""Pictures for the README, taken in a real headless Chromium from the running overlay: the card
with the live transcript (and live words still being spoken), the people page, and a merge
suggestion. Written to docs/img/; each shot is checked for what it must show, so an empty page
fails."""

import time
from pathlib import Path

import redis
from playwright.sync_api import Page, expect

from services.memory.extract import Extraction
from services.memory.person_store import PersonStore
from shared.schemas import FaceMessage, RecallMessage
from tests.overlay.conftest import Overlay
from tests.overlay.test_live import live, publish, said

IMG = Path(__file__).parents[2] / "docs" / "img"


def shoot(page: Page, name: str, selector: str, must_show: list[str]) -> Path:
    """A screenshot of the page, once ``selector`` is on screen with ``must_show`` in it."""
    element = page.locator(selector).first
    element.wait_for(state="visible", timeout=10_000)
    for text in must_show:  # waits until the page has rendered it; fails after the timeout
        expect(element).to_contain_text(text, timeout=10_000)
    box = element.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 60, box
    page.wait_for_timeout(800)  # the card's entry animation and the thumbnails' loading
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, "a real picture, not a blank one"
    return path


def test_screenshots_of_the_overlay_the_people_page_and_a_merge_suggestion(
    r: redis.Redis, overlay: Overlay, page: Page, store: PersonStore,
    sarah_faces: list[FaceMessage], crowd_faces: list[FaceMessage],
) -> None:  # fmt: skip
    one, other = sarah_faces  # her photo and its mirror, in one frame: memory made two persons of her
    sarah = store.identify(one.vector(), frame_id="f1", face_id="f1:0", thumb=one.thumb).person_id
    twin = store.identify(other.vector(), frame_id="f1", face_id="f1:1", thumb=other.thumb).person_id
    tom = store.identify(crowd_faces[0].vector(), thumb=crowd_faces[0].thumb).person_id
    assert sarah and twin and tom and len({sarah, twin, tom}) == 3
    store.repo.rename(sarah, "Sarah Chen")
    now = time.time()
    store.record_encounter(
        sarah, "e-1", Extraction(
            name="Sarah Chen", company="Stripe", role="engineer", place="climbing gym",
            topics=["rate limits"], open_threads=["we should climb together sometime"],
            facts=["works on the payments API"],
            summary="Met Sarah Chen from Stripe at the climbing gym. Talked about rate limits.",
        ), now - 3 * 86400 - 600, now - 3 * 86400, "s0", "Hi, I'm Sarah Chen from Stripe.", ["s0-a1"],
    )  # fmt: skip
    store.repo.rename(tom, "Tom Baker")
    card = store.recall(sarah, now=now)
    page.goto(f"{overlay.url}/")
    page.wait_for_selector("#status", state="attached")
    publish(
        r, said(1, "Sarah! Good to see you again."), said(2, "Hi Alex, how was the climbing trip?"),
        live(3, 2, "Great, we finally", "did the north"),  # still speaking: live words, greyed
        RecallMessage(
            recall_id="r1", person_id=sarah, similarity=0.93, t=time.time(), others=["Tom Baker"],
            strangers=3, stay_s=600, thumb=store.profile(sarah).thumb, **card.model_dump(),
        ),
    )  # fmt: skip
    shoot(page, "overlay", "#card.shown", ["Sarah Chen", "Stripe", "climbing gym"])
    assert "how was the climbing trip" in page.inner_text("#ticker")
    assert page.inner_text("#ticker p.partial") == "Great, we finally did the north"

    page.goto(f"{overlay.url}/people#token={overlay.token}")
    shoot(page, "merge-suggestion", "#suggestions .suggestion", ["Same person?"])
    page.locator("#list").get_by_text("Sarah Chen").first.click()
    shoot(page, "people", "#detail", ["Sarah Chen", "Stripe"])
