"""Settings of the memory service (``CONVO_MEMORY__*``, ``CONVO_EXTRACT__*``)."""

from pydantic import Field

from services.trainer.settings import DatasetSettings, LoraSettings
from shared.settings import ServiceSettings, SettingsGroup


class MatchSettings(SettingsGroup):
    """How a face embedding is matched to a person.

    Measured with buffalo_s (docs/ARCHITECTURE.md): the same face scores 0.94-0.98 across a
    flip, rescale, crop or heavy JPEG; different people at most 0.33.
    """

    threshold: float = Field(0.45, gt=0, lt=1)
    """A person matches when their best view scores at least this (cosine)."""
    margin: float = Field(0.08, ge=0, lt=1)
    """...and beats the runner-up person by at least this; otherwise the match is ambiguous."""
    named_slack: float = Field(0.1, ge=0, lt=1)
    """A face that misses by less than this (under the threshold, or within the margin) is given
    to a known person whose first name was said aloud in the last ``view_s``: the name settles it."""
    new_view_below: float = Field(0.9, gt=0, le=1)
    """A matched face joins the person's views when no view scores above this (a new look)."""
    max_views: int = Field(12, ge=1)
    """Views kept per person; the oldest goes when a new one comes."""


class ViewSettings(SettingsGroup):
    """Who is in view, which card the overlay shows, and the strangers around the wearer."""

    view_s: float = Field(6.0, gt=0)
    """A person not seen for this long has left the view: their card goes (the page hides it), and
    comes back at once when they return. While they stay, their card is renewed every half of it."""
    known_bonus: float = Field(2.0, ge=1)
    """A person the wearer knows weighs this much more than a stranger when ranking who they talk to."""
    named_bonus: float = Field(3.0, ge=1)
    """A known person whose name was said in the last ``view_s`` (or in the conversation) weighs this
    much more: "Ana, good to see you" settles who the wearer is talking to."""
    candidate_ttl_s: float = Field(7 * 86400.0, gt=0)
    """A face that never became a person (not talked to, not named, not seen across sessions) is a
    candidate; it and every trace of it are removed after this long."""
    promote_sessions: int = Field(2, ge=2)
    """A candidate seen in this many sessions (and ``promote_frames`` frames) becomes a person."""
    promote_frames: int = Field(6, ge=1)
    """Frames a candidate must be seen in, over those sessions, to become a person."""
    promote_max_faces: int = Field(3, ge=1)
    """Only frames with at most this many faces count toward that: someone seen again and again in a
    small group is an acquaintance; a face in the same crowd twice (a team, an audience) is not."""


class EncounterSettings(SettingsGroup):
    """How speech and faces of a session become one conversation."""

    gap_s: float = Field(30.0, gt=0)
    """Speech separated by less than this is one conversation; a longer pause ends it."""
    tick_s: float = Field(2.0, gt=0)
    """How often conversations that went quiet are closed."""


class ExtractSettings(SettingsGroup):
    """Who extracts names, companies and facts from a conversation."""

    backend: str = "auto"
    """``anthropic``, ``rules``, ``local`` (the base model plus the newest adapter), or ``auto``
    (anthropic when an API key is set, else rules)."""
    anthropic_api_key: str | None = None
    """Key for Anthropic's API (``CONVO_EXTRACT__ANTHROPIC_API_KEY``)."""
    anthropic_base_url: str | None = None
    """Another endpoint for the Messages API (a proxy, or a local test server)."""
    model: str = "claude-haiku-4-5"
    """Anthropic model."""
    timeout_s: float = Field(20.0, gt=0)
    """Per request."""
    max_retries: int = Field(2, ge=0)
    """Retries of a failed or malformed answer before the rules backend takes over."""


class VoiceMatchSettings(SettingsGroup):
    """How a segment's voice (from the voice stage) is told to be the wearer's.

    Measured with resemblyzer's GE2E on real recorded speech (docs/ARCHITECTURE.md, "Voice"):
    against two enrolled sentences, the same reader's other sentences score 0.75-0.93, another
    reader's at most 0.73.
    """

    wearer_threshold: float = Field(0.74, gt=0, lt=1)
    """A segment whose voice scores at least this against an enrolled view is the wearer's."""
    person_threshold: float = Field(0.78, gt=0, lt=1)
    """Another voice is a known person's when it scores at least this against one of their voice
    views, stricter than the wearer's: a wrong "by voice" card is worse than none."""
    margin: float = Field(0.05, ge=0, lt=1)
    """...and beats the runner-up person by this much."""
    same_voice: float = Field(0.74, gt=0, lt=1)
    """Two of the other side's lines in one conversation are one voice when they score at least
    this against each other. Only the lines of its one voice become the person's voice views: with
    several people talking, a line of another would make their voice the person's."""
    min_speech_s: float = Field(1.0, ge=0)
    """Shorter lines neither name anyone by voice nor become a voice view."""
    max_views: int = Field(12, ge=1)
    """Voice views kept per person; the oldest goes when a new one comes."""
    weight: float = Field(0.05, ge=0)
    """Evidence a matching voice adds to its person in the session's view (as much as a face
    filling a twentieth of the frame), which keeps a speaker out of frame on the card while
    they talk. Whose card shows does not hang on it: a known person whose voice was heard in
    the last ``view_s`` is taken over every face in view."""


class MemorySettings(ServiceSettings):
    """Settings of ``python -m services.memory`` and of its scribe, ``python -m services.scribe``."""

    wearer_name: str | None = None
    """The wearer's own name, so that their self-introduction is not taken for the other person's."""
    match: MatchSettings = MatchSettings()
    """Face matching (``CONVO_MATCH__THRESHOLD=0.5``)."""
    view: ViewSettings = ViewSettings()
    """Cards and candidates (``CONVO_VIEW__VIEW_S=6``)."""
    voice_match: VoiceMatchSettings = VoiceMatchSettings()
    """The wearer's lines by voice (``CONVO_VOICE_MATCH__WEARER_THRESHOLD=0.74``)."""
    encounter: EncounterSettings = EncounterSettings()
    """Conversation assembly (``CONVO_ENCOUNTER__GAP_S=20``)."""
    extract: ExtractSettings = ExtractSettings()
    """Extraction backend (``CONVO_EXTRACT__BACKEND=rules``)."""
    dataset: DatasetSettings = DatasetSettings()
    """The trainer's rows, which ``forget`` removes a person from (``CONVO_DATASET__DIR``)."""
    lora: LoraSettings = LoraSettings()
    """The ``local`` backend's base model (``CONVO_LORA__BASE_MODEL``), shared with the trainer."""
