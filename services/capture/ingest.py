"""The HTTP frame ingest: what a phone relay for camera glasses (omiGlass, ...) posts to."""

import time
from collections.abc import Callable

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from services.capture.handler import ImageTooLargeError
from services.capture.settings import FrameSettings
from shared.schemas import BadMessageError, FrameMessage

JPEG_TYPES = {"image/jpeg", "image/jpg", "application/octet-stream"}


class IngestResult(BaseModel):
    """What became of a posted frame."""

    forwarded: bool
    """True if the frame went to the ``frames`` stream; false if it was dropped:
    no speech, the rate cap, or backpressure while the face stage lags."""
    frame_id: str | None = None
    """The id of the forwarded frame."""


def build_ingest_app(
    submit: Callable[[float, bytes], list[FrameMessage]], settings: FrameSettings
) -> FastAPI:
    """``submit(t, jpeg)`` gates and publishes a frame, returning what it forwarded."""
    app = FastAPI(title="Conversationalist frame ingest", version="1")

    @app.post(
        "/frames",
        response_model=IngestResult,
        responses={413: {"description": "Body or image too large"}, 415: {"description": "Not a JPEG"}},
    )
    async def post_frame(
        request: Request,
        t: float | None = Query(
            None, description="Capture time, epoch seconds (the glasses' clock); default: now."
        ),
    ) -> IngestResult:
        """Post one JPEG frame as the request body (``Content-Type: image/jpeg``)."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in JPEG_TYPES:
            raise HTTPException(415, f"expected Content-Type image/jpeg, got {content_type or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise HTTPException(
                413, f"body of {declared} bytes is over the limit of {settings.max_body_bytes}"
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > settings.max_body_bytes:
                raise HTTPException(413, f"body is over the limit of {settings.max_body_bytes} bytes")
        try:
            sent = await run_in_threadpool(submit, t if t is not None else time.time(), bytes(body))
        except ImageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except BadMessageError as exc:
            raise HTTPException(415, str(exc)) from None
        return IngestResult(forwarded=bool(sent), frame_id=sent[0].frame_id if sent else None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
