"""The overlay web app: the live recall card page, the people page and its API.

Each browser tab follows ``recalls`` and ``transcripts`` with plain XREAD from where the
streams end when it connects, so tabs never take entries from each other or from a
consumer group. Every event's id carries both stream positions, so a tab that reconnects
with ``Last-Event-ID`` resumes exactly where it stopped.
"""

import base64
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Annotated, Any

import redis
import redis.asyncio as aredis
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from services.memory.admin import PersonAdmin
from services.memory.person_store import PersonStore, _s
from services.overlay.settings import OverlaySettings
from shared.consumer import COMMIT_SCRIPT, commit_args
from shared.runtime import credentials
from shared.schemas import BadMessageError, RecallMessage, TranscriptMessage, dead_letter
from shared.streams import ADMIN_TOKEN_KEY, Groups, MemoryKeys, done_key, stream_id

log = logging.getLogger(__name__)

CLIENTS = Gauge("convo_overlay_clients", "Browser tabs following the live streams")
EVENTS = Counter("convo_overlay_events_total", "Events sent to browser tabs", ["event"])
ADMIN = Counter("convo_overlay_admin_total", "People API changes", ["action"])

PersonId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:\-]{1,200}$", description="A person id, e.g. p-1a2b3c")
]
STREAM_ID = r"\d{1,20}-\d{1,20}"


def ensure_admin_token(client: redis.Redis, settings: OverlaySettings) -> tuple[str, bool]:
    """The configured token, or the one kept in Redis, made now if there is none. True if new."""
    if settings.overlay.admin_token is not None:
        return settings.overlay.admin_token.get_secret_value(), False
    made = secrets.token_urlsafe(24)
    created = bool(client.set(ADMIN_TOKEN_KEY, made, nx=True))
    return _s(client.get(ADMIN_TOKEN_KEY)), created


# -- API models ----------------------------------------------------------------------------


class Fact(BaseModel):
    text: str
    kind: str = Field(description="fact or topic")
    source: str = Field(description="The encounter that said it")
    t: float


class Person(BaseModel):
    id: str
    name: str
    company: str
    role: str
    first_seen: float
    last_seen: float
    encounters: int
    views: int
    facts: list[Fact]
    thumb: str = Field(description="A data: URL of the newest face thumbnail, or empty")


class Encounter(BaseModel):
    id: str
    session: str
    t_start: float
    t_end: float
    summary: str
    place: str
    topics: list[str]
    open_threads: list[str]
    backend: str
    transcript: str


class PersonDetail(Person):
    summary: str = Field(description="What the recall card says about them now")
    view_ids: list[str] = Field(description="Stored face views; one can be split off as 'not this person'")
    history: list[Encounter]


class RenameRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"\S")


class MergeRequest(BaseModel):
    other: str = Field(min_length=1, max_length=200, description="The person to fold into this one")


class SplitRequest(BaseModel):
    view_id: str = Field(min_length=1, max_length=200)


class SplitResult(BaseModel):
    person_id: str = Field(description="The new person holding the view")


class ForgetResult(BaseModel):
    removed: dict[str, int] = Field(description="What was deleted, by kind and stream")


class Health(BaseModel):
    status: str
    redis: bool


class Problem(BaseModel):
    detail: str


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else ""


def _person(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": p["id"], "name": p["name"], "company": p["company"], "role": p["role"],
        "first_seen": float(p["first_seen"]), "last_seen": float(p["last_seen"]),
        "encounters": int(p["encounters"]), "views": int(p["views"]),
        "facts": sorted(p["facts"], key=lambda f: f["t"]), "thumb": _data_url(p.get("thumb", b"")),
    }  # fmt: skip


def _matches(p: dict[str, Any], q: str) -> bool:
    text = " ".join([p["name"], p["company"], p["role"], *(f["text"] for f in p["facts"])])
    return q.lower() in text.lower()


# -- the app -------------------------------------------------------------------------------

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No bearer token"},
    403: {"model": Problem, "description": "Wrong bearer token"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such person"}}


def create_app(settings: OverlaySettings, client: redis.Redis, token: str) -> FastAPI:
    """The app for one Redis; ``token`` guards the people API."""
    app = FastAPI(
        title="Conversationalist overlay",
        version="1",
        description="The recall card page, its live event stream, and the people memory knows.",
    )
    store = PersonStore(client, settings.match)
    admin = PersonAdmin(store, settings.streams, settings.dataset)
    streams = settings.streams
    bearer = HTTPBearer(auto_error=False)
    pages = files("services.overlay") / "static"

    def authorised(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if creds is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong bearer token")

    def profile(pid: str) -> dict[str, Any]:
        try:
            return store.profile(pid)
        except KeyError:
            raise HTTPException(404, f"no person {pid}") from None

    Admin = Depends(authorised)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overlay_page() -> str:
        return (pages / "overlay.html").read_text()

    @app.get("/people", response_class=HTMLResponse, include_in_schema=False)
    def people_page() -> str:
        return (pages / "people.html").read_text()

    @app.get("/healthz", responses={503: {"model": Health}})
    def healthz() -> Response:
        """200 when Redis answers, 503 when it does not."""
        try:
            ok = bool(client.ping())
        except redis.RedisError:
            ok = False
        body = Health(status="ok" if ok else "redis unreachable", redis=ok)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/events",
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "recall and transcript events"},
            400: {"model": Problem, "description": "Unreadable Last-Event-ID"},
        },
    )
    async def events(
        request: Request,
        last_event_id: Annotated[
            str | None, Header(description="Resume after this event: '<recalls id>,<transcripts id>'")
        ] = None,
    ) -> EventSourceResponse:
        """Live ``recall`` and ``transcript`` events (Server-Sent Events), from now on, or after
        ``Last-Event-ID`` when a tab reconnects."""
        if last_event_id:
            parts = last_event_id.split(",")
            if len(parts) != 2 or not all(_is_stream_id(p) for p in parts):
                raise HTTPException(400, f"unreadable Last-Event-ID {last_event_id[:80]!r}")
            cursors = {streams.recalls: parts[0], streams.transcripts: parts[1]}
        else:
            cursors = {s: _tail_id(client, s) for s in (streams.recalls, streams.transcripts)}
        return EventSourceResponse(
            _follow(request, settings, cursors), ping=int(settings.overlay.ping_s), send_timeout=30
        )

    @app.get("/api/people", dependencies=[Admin], responses=AUTH_RESPONSES)
    def list_people(
        q: Annotated[str, Query(max_length=200, description="Search names, companies and facts")] = "",
    ) -> list[Person]:
        """Every person memory knows, most recently seen first."""
        return [Person(**_person(p)) for p in admin.list() if not q or _matches(p, q)]

    @app.get("/api/people/{pid}", dependencies=[Admin], responses=AUTH_RESPONSES | NOT_FOUND)
    def show_person(pid: PersonId) -> PersonDetail:
        """One person with what the card says now, their views and every conversation."""
        try:
            p = admin.show(pid)
        except KeyError:
            raise HTTPException(404, f"no person {pid}") from None
        history = []
        for eid in reversed(p["encounter_ids"]):
            e = {_s(k): _s(v) for k, v in client.hgetall(MemoryKeys.encounter(eid)).items()}
            if e:
                history.append(Encounter(
                    id=eid, session=e["session"], t_start=float(e["t_start"]), t_end=float(e["t_end"]),
                    summary=e["summary"], place=e.get("place", ""), topics=json.loads(e.get("topics", "[]")),
                    open_threads=json.loads(e.get("open_threads", "[]")), backend=e.get("backend", ""),
                    transcript=e["transcript"],
                ))  # fmt: skip
        return PersonDetail(**_person(p), summary=p["summary"], view_ids=p["view_ids"], history=history)

    @app.post("/api/people/{pid}/rename", dependencies=[Admin], responses=AUTH_RESPONSES | NOT_FOUND)
    def rename(pid: PersonId, body: RenameRequest) -> Person:
        """Set the person's name."""
        profile(pid)
        admin.rename(pid, body.name)
        ADMIN.labels("rename").inc()
        return Person(**_person(profile(pid)))

    @app.post(
        "/api/people/{pid}/merge",
        dependencies=[Admin],
        responses=AUTH_RESPONSES | NOT_FOUND | {400: {"model": Problem, "description": "Same person"}},
    )
    def merge(pid: PersonId, body: MergeRequest) -> Person:
        """``other`` was this person all along: their views, facts and conversations move here."""
        profile(pid), profile(body.other)
        if pid == body.other:
            raise HTTPException(400, "cannot merge a person into themselves")
        admin.merge(pid, body.other)
        ADMIN.labels("merge").inc()
        return Person(**_person(profile(pid)))

    @app.post(
        "/api/people/{pid}/split",
        dependencies=[Admin],
        responses=AUTH_RESPONSES | NOT_FOUND | {400: {"model": Problem, "description": "The only view"}},
    )
    def split(pid: PersonId, body: SplitRequest) -> SplitResult:
        """Not this person: move one face view out into a new person."""
        profile(pid)
        try:
            new = admin.split(pid, body.view_id)
        except KeyError:
            raise HTTPException(404, f"{pid} has no view {body.view_id}") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        ADMIN.labels("split").inc()
        return SplitResult(person_id=new)

    @app.delete("/api/people/{pid}", dependencies=[Admin], responses=AUTH_RESPONSES | NOT_FOUND)
    def forget(pid: PersonId) -> ForgetResult:
        """Forget the person everywhere: views, facts, conversations and stream entries."""
        profile(pid)
        removed = admin.forget(pid)
        ADMIN.labels("forget").inc()
        return ForgetResult(removed=removed)

    return app


def _is_stream_id(text: str) -> bool:
    return re.fullmatch(STREAM_ID, text) is not None


def _tail_id(client: redis.Redis, stream: str) -> str:
    """The id of the stream's newest entry: reading after it gives only what comes next."""
    last = client.xrevrange(stream, count=1)
    return _s(last[0][0]) if last else "0-0"


def _event(stream: str, fields: dict[bytes, bytes], settings: OverlaySettings) -> tuple[str, dict[str, Any]]:
    if stream == settings.streams.recalls:
        card = RecallMessage.from_fields(fields)
        data = card.model_dump(exclude={"thumb"}) | {"thumb": _data_url(card.thumb)}
        return "recall", data
    msg = TranscriptMessage.from_fields(fields)
    return "transcript", msg.model_dump(include={"segment_id", "session", "t_start", "t_end", "text"})


async def _dead_letter(
    client: aredis.Redis,
    settings: OverlaySettings,
    stream: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    exc: Exception,
) -> None:
    """Every tab sees a bad entry; the first one to get here files it in ``dlq``."""
    log.error("overlay cannot show %s entry %s: %s", stream, entry_id, exc)
    letter = dead_letter(stream, entry_id, str(exc), fields, group=Groups.OVERLAY)
    # The consumer loop's commit script, so that the mark and the letter are one step: a tab
    # closed between the two would leave the entry marked as filed with no letter.
    key = done_key(Groups.OVERLAY, f"{stream}:{entry_id}")
    args = commit_args(
        settings.consumer.dedupe_ttl_s, [(key, [(settings.streams.dlq, settings.caps.dlq, letter)])]
    )
    await client.register_script(COMMIT_SCRIPT)(args=args)


async def _follow(
    request: Request, settings: OverlaySettings, cursors: dict[str, str]
) -> AsyncIterator[dict[str, str]]:
    """One tab's events. Its own connection, because a blocking XREAD holds one."""
    client = aredis.Redis.from_url(
        settings.redis_url, socket_keepalive=True, **credentials(settings, Groups.OVERLAY)
    )
    CLIENTS.inc()
    try:
        while not await request.is_disconnected():
            reply = await client.xread(cursors, block=settings.overlay.block_ms, count=100)
            # XREAD answers stream by stream; the page wants them in the order they were written.
            entries = sorted(
                (
                    (stream_id(eid), _s(stream), _s(eid), fields)
                    for stream, batch in reply or []
                    for eid, fields in batch
                ),
            )
            events: list[dict[str, str]] = []
            for _, stream, entry_id, fields in entries:
                cursors[stream] = entry_id
                event_id = f"{cursors[settings.streams.recalls]},{cursors[settings.streams.transcripts]}"
                try:
                    kind, data = _event(stream, fields, settings)
                except BadMessageError as exc:
                    # Filed before any event of the batch goes out: a tab closed as soon as it
                    # has what it wanted must not skip the letter.
                    await _dead_letter(client, settings, stream, entry_id, fields, exc)
                    continue
                events.append({"event": kind, "id": event_id, "data": json.dumps(data)})
            for event in events:
                EVENTS.labels(event["event"]).inc()
                yield event
    finally:
        CLIENTS.dec()
        await client.aclose()
