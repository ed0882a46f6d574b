"""What memory stores, as typed records. Only ``repository.py`` reads or writes their Redis form."""

from pydantic import BaseModel, Field


class Fact(BaseModel):
    """Something said about a person, with the encounter it came from."""

    text: str
    kind: str = Field(description="fact or topic")
    source: str = Field(description="The encounter that said it")
    t: float


class Person(BaseModel):
    """One person memory knows."""

    id: str
    name: str = ""
    company: str = ""
    role: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    encounters: int = 0
    """Conversations recorded with them."""
    views: int = 0
    """Stored face views."""
    facts: list[Fact] = []
    """Oldest first."""
    encounter_ids: list[str] = []
    """Oldest first."""
    thumb: bytes = b""
    """The newest face thumbnail (JPEG), or empty."""
    candidate: bool = False
    """A face not yet a person: never talked to, named or seen across sessions; it expires."""
    frames: int = 0
    """Frames they were seen in as a candidate."""

    @property
    def known(self) -> bool:
        """Whether the wearer knows them: named, or talked to before."""
        return bool(self.name) or self.encounters > 0

    def mentions(self, query: str) -> bool:
        """Whether ``query`` is in their name, company, role or facts (case-insensitive)."""
        text = " ".join([self.name, self.company, self.role, *(f.text for f in self.facts)])
        return query.lower() in text.lower()


class Encounter(BaseModel):
    """One finished conversation with one person."""

    id: str
    person_id: str
    session: str
    t_start: float
    t_end: float
    transcript: str
    summary: str
    place: str = ""
    topics: list[str] = []
    open_threads: list[str] = []
    backend: str = ""
    segments: list[str] = []
    """The speech segments it came from, so that forget can find them."""


class Card(BaseModel):
    """What the overlay shows about a person now; ``summary`` says it all in one line."""

    name: str
    company: str = ""
    role: str = ""
    last_met: float = 0.0
    """End of the last conversation with them, epoch seconds; 0 when there was none."""
    place: str = ""
    topics: list[str] = []
    open_threads: list[str] = []
    backend: str = ""
    summary: str
