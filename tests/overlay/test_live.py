"""The overlay as a process: live events over SSE, reconnects, and the page in a real Chromium."""

import json
import time
from pathlib import Path

import httpx
import redis
from playwright.sync_api import Page

from services.memory.conversations import Conversations
from services.memory.person_store import PersonStore
from services.memory.wearer import ME, THEM
from shared.schemas import FaceMessage, PartialTranscriptMessage, RecallMessage, TranscriptMessage
from shared.streams import MemoryKeys
from tests.overlay.conftest import Overlay


def recall(i: int, name: str = "Sarah Chen", **card: object) -> RecallMessage:
    return RecallMessage(
        recall_id=f"r{i}", person_id="p-1", name=name, summary=f"{name} — first time seen",
        similarity=0.9, t=time.time(), **card,  # type: ignore[arg-type]
    )  # fmt: skip


def said(i: int, text: str) -> TranscriptMessage:
    t = time.time()
    return TranscriptMessage(
        segment_id=f"s{i}", session="s1", t_start=t - 1, t_end=t, text=text, language="en",
        confidence=0.9, model="tiny.en",
    )  # fmt: skip


def live(i: int, n: int, stable: str, pending: str) -> PartialTranscriptMessage:
    """The ``n``-th live words of segment ``s<i>`` while it is still being spoken."""
    t = time.time()
    return PartialTranscriptMessage(
        partial_id=f"s{i}-p{n}", segment_id=f"s{i}", session="s1", t_start=t - n, t_end=t,
        stable=stable, pending=pending, model="tiny.en",
    )  # fmt: skip


STREAM_OF = {
    RecallMessage: "recalls",
    TranscriptMessage: "transcripts",
    PartialTranscriptMessage: "transcripts:partial",
}


def publish(r: redis.Redis, *messages: RecallMessage | TranscriptMessage | PartialTranscriptMessage) -> None:
    for msg in messages:
        r.xadd(STREAM_OF[type(msg)], msg.to_fields())


class Events:
    """An open ``/events`` stream, read one event at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.iter_lines()

    def next(self) -> dict[str, str]:
        event: dict[str, str] = {}
        for line in self.lines:
            if not line:
                if "data" in event:
                    return event
                continue
            if not line.startswith(":"):  # ':' lines are keep-alive comments
                key, _, value = line.partition(":")
                event[key] = value.removeprefix(" ")
        raise AssertionError("the event stream ended")

    def take(self, n: int) -> list[dict[str, str]]:
        return [self.next() for _ in range(n)]


def events(overlay: Overlay, last_id: str | None = None) -> httpx.Response:
    headers = {"Last-Event-ID": last_id} if last_id else {}
    return httpx.stream("GET", f"{overlay.url}/events", headers=headers, timeout=20)  # type: ignore[return-value]


def shown(event: dict[str, str]) -> str:
    data = json.loads(event["data"])
    return data["name"] if event["event"] == "recall" else data["text"]


def test_a_reconnecting_tab_misses_nothing(r: redis.Redis, overlay: Overlay) -> None:
    with events(overlay) as res:  # the stream's position is fixed once the answer has started
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        publish(r, recall(1), said(1, "hello there"), recall(2, "Tom Berg"))
        first = Events(res).take(3)

    # While the tab is away: three good entries, then one that no reader can parse. Each tab
    # closes as soon as it has its three events; the bad entry must be filed all the same.
    publish(r, said(2, "how was the climb"), recall(3, "Lee Wong"), said(3, "see you soon"))
    r.xadd("recalls", {"v": "9", "recall_id": "bad"})

    with events(overlay, first[-1]["id"]) as res:
        second = Events(res).take(3)
    with events(overlay, first[-1]["id"]) as res:  # a second tab resuming from the same place
        assert Events(res).take(3) == second

    got = first + second
    # Each stream in order; across the two, entries written in the same millisecond have no order.
    assert [shown(e) for e in got if e["event"] == "recall"] == ["Sarah Chen", "Tom Berg", "Lee Wong"]
    assert [shown(e) for e in got if e["event"] == "transcript"] == [
        "hello there", "how was the climb", "see you soon"
    ]  # fmt: skip
    assert {shown(e) for e in first} == {"Sarah Chen", "hello there", "Tom Berg"}
    assert len({e["id"] for e in got}) == 6, "no event twice"
    letters = r.xrange("dlq")
    assert len(letters) == 1, "the bad entry is filed once however many tabs saw it"
    assert letters[0][1][b"stream"] == b"recalls" and b"unknown schema version" in letters[0][1][b"error"]


def test_two_tabs_both_get_every_event(r: redis.Redis, overlay: Overlay) -> None:
    with events(overlay) as a, events(overlay) as b:
        publish(r, recall(1), recall(2, "Tom Berg"))
        assert Events(a).take(2) == Events(b).take(2)
    assert r.xlen("recalls") == 2, "plain XREAD: nothing is consumed"


def test_an_unreadable_last_event_id_is_refused(overlay: Overlay) -> None:
    with events(overlay, "garbage") as res:
        assert res.status_code == 400


def test_the_overlay_page_shows_the_card_when_a_recall_comes(
    r: redis.Redis,
    overlay: Overlay,
    page: Page,
    people: dict[str, str],
    store: PersonStore,
    sarah_faces: list[FaceMessage],
    artifacts: Path,
) -> None:
    page.goto(f"{overlay.url}/")
    page.wait_for_selector("#status.live")
    assert page.locator("#card").is_hidden() and page.locator("#idle").is_visible()

    card = store.recall(people["sarah"])  # what memory puts on the card for her now
    seen = sarah_faces[1]
    publish(r, said(1, "Hey, good to see you again!"), said(2, "How did the rate limit work go?"))
    live = RecallMessage(
        recall_id="r-live",
        person_id=people["sarah"],
        similarity=0.95,
        t=time.time(),
        thumb=seen.thumb,
        **card.model_dump(),
    )
    publish(r, live)
    page.wait_for_selector("#card.shown", timeout=10_000)
    assert page.text_content("#name") == "Sarah Chen"
    assert page.text_content("#org") == "engineer · Stripe"
    assert page.text_content("#met") == "Last met 3 days ago at the climbing gym"
    assert page.text_content("#thread") == "climb together sometime"
    assert page.locator("#ticker p").all_text_contents() == [
        "Hey, good to see you again!", "How did the rate limit work go?"
    ]  # fmt: skip
    assert page.evaluate("document.getElementById('face').naturalWidth") > 0, "the thumbnail decoded"
    page.screenshot(path=artifacts / "overlay.png")


def test_live_words_show_greyed_while_someone_speaks_and_the_transcript_replaces_them(
    r: redis.Redis, overlay: Overlay, page: Page
) -> None:
    page.goto(f"{overlay.url}/")
    page.wait_for_selector("#status.live")
    publish(r, said(1, "Hello there."), live(2, 1, "", "I have been"))
    page.wait_for_selector("#ticker p.partial")
    publish(r, live(2, 2, "I have been", "working on pay"))
    page.wait_for_function("document.querySelector('#ticker p.partial .pending').textContent.includes('pay')")
    line = page.locator("#ticker p.partial")
    assert line.inner_text() == "I have been working on pay"
    assert page.locator("#ticker p.partial .pending").inner_text().strip() == "working on pay"
    grey = page.evaluate("getComputedStyle(document.querySelector('#ticker p.partial')).fontStyle")
    assert grey == "italic", "live words look unlike what was transcribed"
    publish(r, said(2, "I have been working on payments."))
    page.wait_for_selector("#ticker p.partial", state="detached")
    late = live(2, 3, "I have been working", "on payments")
    publish(r, late)  # another replica's partial, after the transcript
    publish(r, said(3, "Nice."))
    page.wait_for_function("document.querySelectorAll('#ticker p').length === 3")
    assert page.locator("#ticker p").all_text_contents() == [
        "Hello there.",
        "I have been working on payments.",
        "Nice.",
    ], "one line per segment, the transcript in place of its live words"


def test_the_wearers_own_lines_are_marked_by_voice(r: redis.Redis, overlay: Overlay, page: Page) -> None:
    """Memory marks each segment me/them by voice; the ticker shows the wearer's own lines as
    theirs, and a line no voice is known for (or whose mark is unreadable) plainly."""
    page.goto(f"{overlay.url}/")
    page.wait_for_selector("#status.live")
    conversations = Conversations(r)
    conversations.voice("s1", "s1", ME, 0.91)
    conversations.voice("s1", "s2", THEM, 0.12)
    r.hset(MemoryKeys.speakers("s1"), "s3", "not json")
    publish(
        r, said(1, "Hello, I am Alex."), said(2, "Hi Alex, I'm Sarah."), said(3, "Nice."), said(4, "Yes.")
    )
    page.wait_for_function("document.querySelectorAll('#ticker p').length === 3")
    marks = page.evaluate("[...document.querySelectorAll('#ticker p')].map((p) => p.dataset.speaker)")
    assert marks == [THEM, "", ""], "s1 scrolled off; s2 is theirs; s3 and s4 have no mark"
    publish(r, said(5, "Me again."))
    conversations.voice("s1", "s6", ME, 0.9)
    publish(r, said(6, "And me."))
    page.wait_for_function("document.querySelector('#ticker p:last-child').dataset.speaker === 'me'")
    before = page.evaluate(
        "getComputedStyle(document.querySelector('#ticker p:last-child'), '::before').content"
    )
    assert "you" in before, "the wearer's line says it is theirs"
    assert r.xlen("dlq") == 0


def test_the_people_page_lists_and_renames(
    r: redis.Redis, overlay: Overlay, page: Page, people: dict[str, str], store: PersonStore, artifacts: Path
) -> None:
    page.goto(f"{overlay.url}/people#token={overlay.token}")
    page.wait_for_selector(".row")
    assert page.locator(".row .nm").all_text_contents() == ["Unknown person", "Tom Berg", "Sarah Chen"]
    page.fill("#q", "stripe")
    page.wait_for_function("document.querySelectorAll('.row').length === 1")
    page.click(f".row[data-person='{people['sarah']}']")
    page.wait_for_selector("#person-name")
    assert "last met 3 days ago at the climbing gym" in page.text_content(".summary")  # type: ignore[operator]
    page.screenshot(path=artifacts / "people.png")

    page.once("dialog", lambda dialog: dialog.accept("Sarah C. Chen"))
    page.click("#rename")
    page.wait_for_function("document.getElementById('person-name').textContent === 'Sarah C. Chen'")
    assert store.profile(people["sarah"]).name == "Sarah C. Chen"


def test_the_people_page_asks_for_the_token_when_it_is_wrong(overlay: Overlay, page: Page) -> None:
    page.goto("about:blank")
    page.goto(f"{overlay.url}/people#token=wrong")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", overlay.token)
    page.click("#save")
    page.wait_for_selector("#app:not([hidden])")


def test_the_card_names_who_else_is_in_view_and_leaves_with_its_person(
    r: redis.Redis, overlay: Overlay, page: Page
) -> None:
    page.goto(f"{overlay.url}/")
    page.wait_for_selector("#status.live")
    publish(r, recall(1, others=["Tom Berg"], strangers=14, stay_s=1.5, note="introduced just now"))
    page.wait_for_selector("#card.shown", timeout=10_000)
    assert page.text_content("#crowd") == "also here: Tom Berg · and 14 people you don't know"
    assert page.text_content("#note") == "introduced just now"
    box = page.locator("#card").bounding_box()
    assert box is not None and box["height"] > 50
    page.wait_for_selector("#card.shown", state="hidden", timeout=5_000)  # not seen for stay_s: it goes
    assert page.locator("#idle").is_visible()
    publish(r, recall(2, strangers=1))  # back in view: the card comes back at once
    page.wait_for_selector("#card.shown", timeout=10_000)
    assert page.text_content("#crowd") == "and 1 person you don't know"
