"""``python -m services.overlay [--check]``: the recall card page and the people page."""

import logging
import signal
import sys
import urllib.request

import typer
import uvicorn

from services.overlay.app import create_app, ensure_admin_token
from services.overlay.settings import OverlaySettings
from shared.logs import configure_logging
from shared.runtime import connect, local_login

log = logging.getLogger("services.overlay")


def main(
    check: bool = typer.Option(False, "--check", help="Exit 0 if the server on this host answers /healthz."),
) -> None:
    settings = local_login(OverlaySettings())
    configure_logging(settings.log_level, settings.log_format)
    web = settings.overlay
    local = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
    base = f"http://{local}:{web.port}"
    if check:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5) as res:
                raise typer.Exit(0 if res.status == 200 else 1)
        except OSError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
    client = connect(settings, "overlay")
    token, made = ensure_admin_token(client, settings)
    if made:
        log.warning("made an admin token for the people page; it is kept in Redis for the next start")
    # Printed each start, as notebook servers do: the people page link carries the token.
    print(f"overlay: {base}/\npeople:  {base}/people#token={token}", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again under the
    # handlers it found at start; these make that a clean exit 0, as every other service gives.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    app = create_app(settings, client, token)
    uvicorn.run(app, host=web.host, port=web.port, log_level="warning", log_config=None)  # our JSON logs


if __name__ == "__main__":
    typer.run(main)
