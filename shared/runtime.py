"""What every service's ``__main__`` does: logging, metrics, the Redis client, ``--check``."""

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
import typer
from prometheus_client import start_http_server

from shared import acl
from shared.consumer import Consumer, Handler, Outputs, Ticker
from shared.logs import configure_logging
from shared.schemas import StreamMessage
from shared.settings import ServiceSettings
from shared.streams import heartbeat_key

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
STATE_DIR = Path(os.environ.get("CONVO_STATE_DIR", Path(__file__).resolve().parents[1] / ".convo"))
"""The local stack's own files: its Redis, users, logs and supervisord (``convo up``)."""
LOCAL_ACL = STATE_DIR / "acl"
"""Where ``convo up`` keeps the local stack's users."""


def local_login(settings: S) -> S:
    """On the local stack's Redis, log in with the users ``convo up`` made: a service or command
    started by hand beside it needs no ``CONVO_ACL_DIR``. The stack is the one at the URL
    ``convo up`` noted (``.convo/redis.url``), or by default the default URL."""
    noted = LOCAL_ACL.parent / "redis.url"
    stack_url = noted.read_text().strip() if noted.exists() else None
    on_stack = settings.redis_url == stack_url or (stack_url is None and "CONVO_REDIS_URL" not in os.environ)
    if settings.acl_dir is None and on_stack and (LOCAL_ACL / "admin.pass").exists():
        return settings.model_copy(update={"acl_dir": LOCAL_ACL})
    return settings


def admin_client() -> tuple[redis.Redis, ServiceSettings]:
    """An operator's client (``admin``) and the settings it was made from."""
    settings = local_login(ServiceSettings())
    return connect(settings, acl.ADMIN), settings


def credentials(settings: ServiceSettings, user: str) -> dict[str, str]:
    """``username``/``password`` for ``user`` when ACLs are on (``acl_dir`` set); none otherwise."""
    if settings.acl_dir is None:
        return {}
    return {"username": user, "password": acl.password(settings.acl_dir, user)}


def connect(settings: ServiceSettings, user: str) -> redis.Redis:
    """A client for binary entries as ``user``, with keepalive so a dead server is noticed."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_keepalive=True,
        socket_connect_timeout=5,
        health_check_interval=15,
        **credentials(settings, user),
    )


def check(settings: ServiceSettings, group: str) -> int:
    """Exit status for a container healthcheck: 0 if a consumer of ``group`` on this host is alive."""
    try:
        client = connect(settings, group)  # each group's service logs in as the user of that name
        pattern = heartbeat_key(group, f"{socket.gethostname()}-*")
        alive = next(iter(client.scan_iter(match=pattern, count=1000)), None) is not None
    except redis.RedisError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print("healthy" if alive else f"unhealthy: no heartbeat for group {group!r} on this host")
    return 0 if alive else 1


@dataclass
class Stage:
    """What a service runs: its handlers, and optionally work on a clock."""

    handlers: Mapping[type[StreamMessage], Handler]
    ticker: Ticker | None = None
    committed: Callable[[Outputs], None] | None = None
    """Told the handlers' outputs once they are written (:class:`Consumer`)."""


def serve(
    settings: ServiceSettings,
    group: str,
    build: Callable[[], Stage | Mapping[type[StreamMessage], Handler]],
    check_only: bool = False,
    burst: bool = False,
) -> int:
    """Run one service: build its handlers (models load here), then consume.

    Runs until SIGTERM, or with ``burst`` until the group is drained.
    """
    configure_logging(settings.log_level, settings.log_format)
    if check_only:
        return check(settings, group)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    stage = build()
    if not isinstance(stage, Stage):
        stage = Stage(stage)
    consumer = Consumer(
        connect(settings, group),
        settings,
        group,
        stage.handlers,
        ticker=stage.ticker,
        committed=stage.committed,
    )
    log.info("%s consumer %s on %s", group, settings.consumer_name, settings.redis_url)
    consumer.run(burst=burst)
    return 0


def stage_app(
    settings_type: Callable[[], S],
    group: str,
    build: Callable[[S], Stage | Mapping[type[StreamMessage], Handler]],
) -> typer.Typer:
    """A service's ``python -m services.<name> [--check] [--burst]``: its settings, built in the
    command, and what to run on them."""
    app = typer.Typer(add_completion=False)

    @app.command()
    def main(
        check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
        burst: bool = typer.Option(False, "--burst", help="Exit 0 once the input streams are drained."),
    ) -> None:
        settings = local_login(settings_type())  # started by hand beside `convo up`: its users
        raise typer.Exit(serve(settings, group, lambda: build(settings), check, burst))

    return app
