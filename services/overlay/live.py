"""The live recall card page and its event stream.

Each browser tab follows ``recalls``, ``transcripts`` and ``transcripts:partial`` with plain
XREAD from where the streams end when it connects, so tabs never take entries from each other
or from a consumer group. Every event's id carries every stream position, so a tab that
reconnects with ``Last-Event-ID`` resumes exactly where it stopped.
"""

import json
import logging
import re
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Annotated, Any

import redis
import redis.asyncio as aredis
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse
from prometheus_client import Counter, Gauge
from sse_starlette.sse import EventSourceResponse

from services.overlay.api import Problem, data_url
from services.overlay.settings import OverlaySettings
from shared.commit import Committer
from shared.runtime import credentials
from shared.schemas import (
    BadMessageError,
    PartialTranscriptMessage,
    RecallMessage,
    TranscriptMessage,
    dead_letter,
)
from shared.streams import Groups, MemoryKeys, done_key, stream_id

log = logging.getLogger(__name__)

CLIENTS = Gauge("convo_overlay_clients", "Browser tabs following the live streams")
EVENTS = Counter("convo_overlay_events_total", "Events sent to browser tabs", ["event"])
STREAM_ID = r"\d{1,20}-\d{1,20}"

router = APIRouter()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def overlay_page() -> str:
    return (files("services.overlay") / "static" / "overlay.html").read_text()


@router.get(
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
        str | None,
        Header(description="Resume after this event: '<recalls id>,<transcripts id>,<partials id>'"),
    ] = None,
) -> EventSourceResponse:
    """Live ``recall``, ``transcript`` and ``partial`` (live words while someone speaks) events
    (Server-Sent Events), from now on, or after ``Last-Event-ID`` when a tab reconnects."""
    settings: OverlaySettings = request.app.state.settings
    streams = settings.streams
    followed = (streams.recalls, streams.transcripts, streams.partial_transcripts)
    if last_event_id:
        parts = last_event_id.split(",")
        if len(parts) not in (2, 3) or not all(re.fullmatch(STREAM_ID, p) for p in parts):
            raise HTTPException(400, f"unreadable Last-Event-ID {last_event_id[:80]!r}")
        parts += [_tail_id(request.app.state.redis, followed[2])] * (3 - len(parts))  # an older page's id
        cursors = dict(zip(followed, parts, strict=True))
    else:
        client = request.app.state.redis
        cursors = {s: _tail_id(client, s) for s in followed}
    return EventSourceResponse(
        _follow(request, settings, cursors), ping=int(settings.overlay.ping_s), send_timeout=30
    )


def _tail_id(client: redis.Redis, stream: str) -> str:
    """The id of the stream's newest entry: reading after it gives only what comes next."""
    last = client.xrevrange(stream, count=1)
    return _text(last[0][0]) if last else "0-0"


def _event(stream: str, fields: dict[bytes, bytes], settings: OverlaySettings) -> tuple[str, dict[str, Any]]:
    if stream == settings.streams.recalls:
        card = RecallMessage.from_fields(fields)
        return "recall", card.model_dump(exclude={"thumb"}) | {"thumb": data_url(card.thumb)}
    if stream == settings.streams.partial_transcripts:
        live = PartialTranscriptMessage.from_fields(fields)
        return "partial", live.model_dump(include={"segment_id", "session", "t_end", "stable", "pending"})
    msg = TranscriptMessage.from_fields(fields)
    return "transcript", msg.model_dump(include={"segment_id", "session", "t_start", "t_end", "text"})


async def _speaker(client: aredis.Redis, session: str, segment_id: str) -> str:
    """``me`` or ``them`` when memory knows by voice who said the segment (the voice stage is
    usually done before the transcriber), else ``""``."""
    raw = await client.hget(MemoryKeys.speakers(session), segment_id)
    try:
        return str(json.loads(raw)["speaker"]) if raw else ""
    except (ValueError, KeyError, TypeError):
        return ""  # a mark it cannot read is no mark; the line still shows


async def _dead_letter(
    commit: Committer,
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
    await commit([(key, [(settings.streams.dlq, settings.caps.dlq, letter)])])


async def _follow(
    request: Request, settings: OverlaySettings, cursors: dict[str, str]
) -> AsyncIterator[dict[str, str]]:
    """One tab's events. Its own connection, because a blocking XREAD holds one."""
    client = aredis.Redis.from_url(
        settings.redis_url, socket_keepalive=True, **credentials(settings, Groups.OVERLAY)
    )
    commit = Committer(client, settings.consumer.dedupe_ttl_s)
    CLIENTS.inc()
    try:
        while not await request.is_disconnected():
            reply = await client.xread(cursors, block=settings.overlay.block_ms, count=100)
            # XREAD answers stream by stream; the page wants them in the order they were written.
            entries = sorted(
                (stream_id(eid), _text(stream), _text(eid), fields)
                for stream, batch in reply or []
                for eid, fields in batch
            )
            events: list[dict[str, str]] = []
            for _, stream, entry_id, fields in entries:
                cursors[stream] = entry_id
                event_id = ",".join(cursors.values())
                try:
                    kind, data = _event(stream, fields, settings)
                    if kind == "transcript":
                        data["speaker"] = await _speaker(client, data["session"], data["segment_id"])
                except BadMessageError as exc:
                    # Filed before any event of the batch goes out: a tab closed as soon as it
                    # has what it wanted must not skip the letter.
                    await _dead_letter(commit, settings, stream, entry_id, fields, exc)
                    continue
                events.append({"event": kind, "id": event_id, "data": json.dumps(data)})
            for event in events:
                EVENTS.labels(event["event"]).inc()
                yield event
    finally:
        CLIENTS.dec()
        await client.aclose()
