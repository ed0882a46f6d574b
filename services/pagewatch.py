"""The overlay page as the wearer sees it: the overlay service on a Redis, its page open in
headless Chromium, and a log of every change of the card (who it is about, whether it is
shown, its text) and of every transcript line added, with the browser's clock. ``convo eval``
reads identity from here, ``bench/e2e.py`` the time to the glass.
"""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from types import TracebackType

import httpx

from shared.redis_server import free_port

# Kept in the page: each change of the card's person, visibility or text, with the time it happened.
OBSERVER = """
window.__cards = [];
const card = document.getElementById("card");
const note = () => window.__cards.push({
  t: Date.now() / 1000, person: card.dataset.person || "", shown: card.classList.contains("shown"),
  text: card.innerText.replace(/\\s+/g, " ").trim(),
});
new MutationObserver(note).observe(
  card, {attributes: true, childList: true, subtree: true, characterData: true});
window.__lines = [];
const seen = new Set();
new MutationObserver(() => {
  for (const p of document.getElementById("ticker").children) {
    const line = {t: Date.now() / 1000, segment: p.dataset.segment || "", text: p.textContent,
                  partial: p.classList.contains("partial"), until: Number(p.dataset.until || 0)};
    const key = [line.segment, line.partial, line.text].join("|");
    if (!seen.has(key)) { seen.add(key); window.__lines.push(line); }
  }
}).observe(document.getElementById("ticker"),
  {attributes: true, childList: true, subtree: true, characterData: true});
"""
CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


@dataclass(frozen=True)
class Shown:
    t: float
    person: str
    shown: bool
    text: str


@dataclass(frozen=True)
class Line:
    """A transcript line as it appeared, or changed, in the page's ticker."""

    t: float
    segment: str
    text: str
    partial: bool
    """Live words while the utterance goes on, or (``False``) the segment's transcript."""
    until: float
    """The capture time up to which the line's speech was heard."""


class PageWatch:
    """Start with ``with PageWatch(redis_url) as watch:``; ``watch.cards(since)`` is what the
    page showed after a time."""

    def __init__(self, redis_url: str, timeout_s: float = 60) -> None:
        self.redis_url = redis_url
        self.timeout_s = timeout_s
        self.url = f"http://127.0.0.1:{free_port()}"

    def __enter__(self) -> "PageWatch":
        from playwright.sync_api import sync_playwright

        chromium = next((c for c in CHROMIUMS if os.path.exists(c)), shutil.which("chromium"))
        if chromium is None:
            raise RuntimeError("no Chromium found (apt-get install chromium); the scorecard reads the page")
        env = {
            **os.environ, "CONVO_REDIS_URL": self.redis_url, "CONVO_OVERLAY__HOST": "127.0.0.1",
            "CONVO_OVERLAY__PORT": self.url.rsplit(":", 1)[1], "CONVO_OVERLAY__BLOCK_MS": "100",
            "CONVO_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        env.pop("CONVO_ACL_DIR", None)
        self.server = subprocess.Popen([sys.executable, "-m", "services.overlay"], env=env)
        self._wait_healthy()
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": 1100, "height": 640})
        self.page.goto(self.url + "/")
        self.page.evaluate(OBSERVER)
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the overlay did not come up for the page")
            time.sleep(0.2)

    def cards(self, since: float = 0.0) -> list[Shown]:
        return [Shown(**c) for c in self.page.evaluate("window.__cards") if c["t"] >= since]

    def lines(self, since: float = 0.0) -> list[Line]:
        return [Line(**x) for x in self.page.evaluate("window.__lines") if x["t"] >= since]

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.browser.close()
        self.playwright.stop()
        self.server.terminate()
        self.server.wait(15)
