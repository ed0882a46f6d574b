"""What is extracted must have been said: every name, company, role, place and fact is checked
against the transcript it came from, whatever the backend, and dropped (and counted) if it
is not there. Case and small spelling differences are allowed, since speech-to-text misspells.
"""

import difflib
import logging
import re

from prometheus_client import Counter

from services.memory.extract import Extraction

log = logging.getLogger(__name__)
DROPPED = Counter("convo_memory_ungrounded_total", "Extracted values not found in the transcript", ["field"])

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Words an extractor adds when it rephrases ("works at Stripe" from "I work at Stripe").
GLUE = {
    "a", "an", "the", "at", "in", "on", "of", "for", "to", "from", "and", "with", "is", "are",
    "works", "work", "runs", "run", "lives", "live", "moved", "studies", "study", "builds", "build",
    "their", "his", "her", "they", "he", "she", "as",
}  # fmt: skip
SIMILAR = 0.8
"""Two words are the same when their similarity ratio is at least this, or one is a stem of the other."""


def words(text: str) -> list[str]:
    return WORD.findall(text.lower().replace("_", " _ "))


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    if min(len(a), len(b)) >= 4 and (a.startswith(b[:4]) and b.startswith(a[:4])):
        return True
    return len(a) >= 4 and difflib.SequenceMatcher(None, a, b).ratio() >= SIMILAR


def said(value: str, heard: list[str], contiguous: bool = True) -> bool:
    """Whether ``value`` was said in ``heard`` (the transcript's words). A name or company must be
    said as it is (its words in order); a fact's own words must each have been said somewhere."""
    wanted = [w for w in words(value) if contiguous or w not in GLUE]
    if not wanted or "_" in words(value):
        return False
    if not contiguous:
        return all(any(_same(w, h) for h in heard) for w in wanted)
    n = len(wanted)
    return any(
        all(_same(w, h) for w, h in zip(wanted, heard[i : i + n], strict=True))
        for i in range(len(heard) - n + 1)
    )


def grounded(extraction: Extraction, transcript: str) -> Extraction:
    """``extraction`` without what ``transcript`` does not say."""
    heard = words(transcript)
    updates: dict[str, object] = {}
    for field in ("name", "company", "role", "place"):
        value = getattr(extraction, field)
        if value and not said(value, heard, contiguous=field != "role"):
            DROPPED.labels(field).inc()
            updates[field] = None
    for field in ("facts", "topics", "open_threads"):
        kept = [v for v in getattr(extraction, field) if said(v, heard, contiguous=False)]
        if len(kept) < len(getattr(extraction, field)):
            DROPPED.labels(field).inc(len(getattr(extraction, field)) - len(kept))
            updates[field] = kept
    if updates:
        log.info("extraction: dropped %s, not in the transcript", ", ".join(sorted(updates)))
    return extraction.model_copy(update=updates)
