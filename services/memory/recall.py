"""The card text, for example
'Sarah Chen from Stripe — last met 3 days ago at the climbing gym; talked about rate limits'."""

from services.memory.extract import Extraction
from services.memory.records import Card, Encounter, Person

UNKNOWN = "Unknown person"


def ago(seconds: float) -> str:
    """'just now', '5 minutes ago', '3 days ago'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"


def card(person: Person, last: Encounter | None, now: float) -> Card:
    """What the card shows: who, from where, when and where last met, topics, open threads."""
    name = person.name or UNKNOWN
    who = name + (f" from {person.company}" if person.company else "")
    if last is None:
        return Card(name=name, company=person.company, role=person.role, summary=f"{who} — first time seen")
    text = f"{who} — last met {ago(now - last.t_end)}"
    if last.place:
        text += f" at the {last.place}"
    if last.topics:
        text += f"; talked about {last.topics[0]}"
    if last.open_threads:
        text += f"; open: {last.open_threads[0]}"
    return Card(
        name=name, company=person.company, role=person.role, last_met=last.t_end, place=last.place,
        topics=last.topics, open_threads=last.open_threads, backend=last.backend, summary=text,
    )  # fmt: skip


def encounter_summary(person: Person, extraction: Extraction) -> str:
    """The encounter's summary, naming who it was with: a known person is met again, and
    "someone new" is only ever a first meeting with nobody named."""
    again = person.encounters > 0
    name = person.name or extraction.name
    if extraction.backend != "rules" and extraction.summary and (not again or not name):
        return extraction.summary
    if extraction.backend != "rules" and extraction.summary:
        return extraction.summary if name in extraction.summary else f"With {name}: {extraction.summary}"
    company = person.company or extraction.company
    who = " ".join(p for p in (name, f"from {company}" if company else None) if p)
    who = who or ("someone you met before" if again else "someone new")
    text = f"Met {who}{' again' if again else ''}" + (
        f" at the {extraction.place}" if extraction.place else ""
    )
    text += "."
    if extraction.topics:
        text += f" Talked about {extraction.topics[0]}."
    return text
