"""The local stack without Docker: a redis-server if none is configured, honcho for the services,
and the demo conversation replayed through capture."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from rich.console import Console

from shared import acl
from shared.redis_server import RedisServer
from shared.runtime import connect
from shared.schemas import EncounterMessage, RecallMessage, TranscriptMessage
from shared.settings import ServiceSettings
from shared.streams import heartbeat_key

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".convo"
console = Console()


def ensure_redis(settings: ServiceSettings) -> tuple[RedisServer | None, Path | None]:
    """Use ``CONVO_REDIS_URL`` when set; otherwise start a private server on the default URL's port,
    with one ACL user per service. Returns the server it started and the ACL directory to log in with."""
    if "CONVO_REDIS_URL" in os.environ:
        return None, settings.acl_dir
    acl_dir = settings.acl_dir or STATE / "acl"
    acl.write(settings, acl_dir)
    for login in (acl_dir, None):  # our own server from an earlier run, or someone else's
        try:
            connect(settings.model_copy(update={"acl_dir": login}), acl.ADMIN).ping()
            console.print(f"using the Redis already running on {settings.redis_url}")
            return None, login
        except redis.AuthenticationError:
            continue
        except redis.ConnectionError:
            break
    port = redis.connection.parse_url(settings.redis_url).get("port", 6380)
    server = RedisServer(STATE / "redis", port=port, acl_dir=acl_dir).start()
    console.print(
        f"started redis-server on {server.url} (data in .convo/redis; one user per service, "
        f"`redis-cli -p {port} --user admin --pass $(cat {acl_dir}/admin.pass)` to look inside)"
    )
    return server, acl_dir


def wait_for_consumers(client: redis.Redis, groups: list[str], timeout_s: float = 300) -> None:
    """Block until every group has a live heartbeat (models loaded), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    missing = groups
    while missing:
        missing = [g for g in groups if not next(client.scan_iter(heartbeat_key(g)), None)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"services did not come up: {', '.join(missing)}")
        time.sleep(0.5)


class StreamFollower:
    """Reads what is new on a few streams since it was made (plain XREAD, no group)."""

    def __init__(self, client: redis.Redis, streams: list[str]) -> None:
        self.client = client
        self.cursors = {}
        for stream in streams:
            last = client.xrevrange(stream, count=1)
            self.cursors[stream] = last[0][0] if last else b"0-0"

    def new(self, block_ms: int | None = None) -> list[tuple[str, dict[bytes, bytes]]]:
        reply = self.client.xread(self.cursors, block=block_ms) or []
        out = []
        for stream, entries in reply:
            for entry_id, fields in entries:
                self.cursors[stream.decode()] = entry_id
                out.append((stream.decode(), fields))
        return out


def overlay_url() -> str:
    from services.overlay.settings import OverlaySettings

    web = OverlaySettings().overlay
    host = "127.0.0.1" if web.host in ("0.0.0.0", "::") else web.host
    return f"http://{host}:{web.port}/"


def play_demo(settings: ServiceSettings, env: dict[str, str]) -> None:
    """Replay each demo meeting through a one-shot capture at real-time speed, and show what
    comes out: the transcripts, the recall cards, and each conversation once memory closes it."""
    from services.capture.demo import build

    client = connect(settings, acl.ADMIN)
    s = settings.streams
    console.print("[bold]demo:[/] waiting for the services to load their models...")
    wait_for_consumers(client, ["transcriber", "face", "memory"])
    follow = StreamFollower(client, [s.transcripts, s.recalls, s.encounters])
    console.print(
        f"[bold]demo:[/] the overlay is at [link]{overlay_url()}[/link]; open it to watch the cards"
    )
    run = time.strftime("%Y%m%d-%H%M%S")  # ids are idempotency keys: a new run needs new ones
    for i, folder in enumerate(build(STATE / "demo"), 1):
        console.print(f"\n[bold]demo:[/] playing {folder.name}")
        subprocess.run(
            [sys.executable, "-m", "services.capture", "--audio", str(folder / "audio.wav"),
             "--frames", str(folder / "frames"), "--realtime", "--session", f"demo-{run}-{i}"],
            env=env, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + float(env.get("CONVO_ENCOUNTER__GAP_S", 30)) + 30
        closed = False
        while not closed and time.monotonic() < deadline:  # until memory closes the conversation
            for stream, fields in follow.new(block_ms=1000):
                closed |= show(stream, fields, settings)
    console.print(
        f"\n[bold]demo:[/] done. The people page is {overlay_url()}people (its token is printed above);"
        " `convo person list` shows the same, `convo status` the groups."
    )


def show(stream: str, fields: dict[bytes, bytes], settings: ServiceSettings) -> bool:
    """Print one entry of the demo's output; True for a finished conversation."""
    s = settings.streams
    if stream == s.transcripts:
        msg = TranscriptMessage.from_fields(fields)
        console.print(f"  [dim]heard:[/] {msg.text}")
    elif stream == s.recalls:
        card = RecallMessage.from_fields(fields)
        console.print(f"  [bold green]overlay:[/] {card.summary}")
    elif stream == s.encounters:
        encounter = EncounterMessage.from_fields(fields)
        console.print(f"  [bold]remembered:[/] {encounter.summary}")
        return True
    return False


def up(demo: bool, procfile: Path) -> int:
    """Run the stack until Ctrl-C; with ``demo``, play the demo conversation once it is up."""
    settings = ServiceSettings()
    server, acl_dir = ensure_redis(settings)
    env = {**os.environ, "CONVO_REDIS_URL": settings.redis_url}
    if acl_dir is not None:
        env["CONVO_ACL_DIR"] = str(acl_dir)
        settings = settings.model_copy(update={"acl_dir": acl_dir})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if demo:
        env.setdefault("CONVO_AUDIO__SOURCE", "none")  # the demo is the audio; keep the mic out of it
        env.setdefault("CONVO_WEARER_NAME", "Alex")  # the demo's wearer
        env.setdefault("CONVO_ENCOUNTER__GAP_S", "8")  # its meetings are seconds apart, not hours
    honcho = Path(sys.executable).with_name("honcho")
    proc = subprocess.Popen([str(honcho), "-f", str(procfile), "-d", str(REPO), "start"], env=env)
    asked_to_stop = False

    def stop(*_: object) -> None:  # a SIGTERM (systemd, CI) is passed on to honcho
        nonlocal asked_to_stop
        asked_to_stop = True
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        if demo:
            play_demo(settings, env)
            console.print("[bold]the stack keeps running; Ctrl-C stops it.[/]")
        rc = proc.wait()
    except KeyboardInterrupt:
        asked_to_stop = True
        try:  # a terminal's Ctrl-C reached honcho too
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait()
    except subprocess.CalledProcessError:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        rc = 1
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        if server:
            server.stop()
    # honcho reports the signal it stopped on (130, 143); a stop that was asked for is a success.
    return 0 if asked_to_stop and rc in (130, 143) else rc
