"""The overlay web app: the live recall card page (``live.py``), the people page and its API
(``people.py``), health and metrics. Routers take what they need from ``app.state``."""

import secrets

import redis
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.memory.admin import PersonAdmin
from services.memory.person_store import PersonStore
from services.memory.repository import text
from services.overlay import live, people
from services.overlay.api import Health
from services.overlay.settings import OverlaySettings
from shared.streams import ADMIN_TOKEN_KEY

ops = APIRouter()


def ensure_admin_token(client: redis.Redis, settings: OverlaySettings) -> tuple[str, bool]:
    """The configured token, or the one kept in Redis, made now if there is none. True if new."""
    if settings.overlay.admin_token is not None:
        return settings.overlay.admin_token.get_secret_value(), False
    made = secrets.token_urlsafe(24)
    created = bool(client.set(ADMIN_TOKEN_KEY, made, nx=True))
    return text(client.get(ADMIN_TOKEN_KEY)), created


@ops.get("/healthz", responses={503: {"model": Health}})
def healthz(request: Request) -> Response:
    """200 when Redis answers, 503 when it does not."""
    try:
        ok = bool(request.app.state.redis.ping())
    except redis.RedisError:
        ok = False
    body = Health(status="ok" if ok else "redis unreachable", redis=ok)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@ops.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics() -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(settings: OverlaySettings, client: redis.Redis, token: str) -> FastAPI:
    """The app for one Redis; ``token`` guards the people API."""
    app = FastAPI(
        title="Conversationalist overlay",
        version="1",
        description="The recall card page, its live event stream, and the people memory knows.",
    )
    app.state.settings = settings
    app.state.redis = client
    app.state.token = token
    app.state.admin = PersonAdmin(PersonStore(client, settings.match), settings.streams, settings.dataset)
    for router in (live.router, people.page, people.router, ops):
        app.include_router(router)
    return app
