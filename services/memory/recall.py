"""The card text, for example
'Sarah Chen from Stripe — last met 3 days ago at the climbing gym; talked about rate limits'."""

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
