"""The local stack without Docker: a redis-server if none is configured, supervisord for the
services (each restarted when it dies, as compose does), and the demo conversation replayed
through capture."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from rich.console import Console

from services.logfiles import Follower
from shared import acl
from shared.redis_server import RedisServer
from shared.runtime import STATE_DIR, connect
from shared.schemas import EncounterMessage, RecallMessage, TranscriptMessage
from shared.settings import ServiceSettings
from shared.streams import heartbeat_key, stream_id

REPO = Path(__file__).resolve().parents[1]
STATE = STATE_DIR
LOGS = STATE / "logs"
console = Console(highlight=False)
# supervisord's backoff: a service that dies within START_S of starting waits 1 s, 2 s, 3 s...
# before each retry and is given up after START_RETRIES; one that ran longer restarts at once.
START_S = 5
START_RETRIES = 10


def _answers(settings: ServiceSettings) -> bool:
    """Whether a Redis answers at the URL (with or without a password it may ask for)."""
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2).ping()
    except (redis.AuthenticationError, redis.ResponseError):
        return True
    except redis.RedisError:
        return False
    return True


def ensure_redis(settings: ServiceSettings) -> tuple[RedisServer | None, Path | None]:
    """Use the Redis at ``CONVO_REDIS_URL`` when one answers there; otherwise start a private
    server on that URL's port (by default 6380) when it is on this machine, with one ACL user per
    service. Returns the server it started and the ACL directory to log in with."""
    url = redis.connection.parse_url(settings.redis_url)
    here = url.get("host", "127.0.0.1") in ("127.0.0.1", "localhost")
    if "CONVO_REDIS_URL" in os.environ and (not here or _answers(settings)):
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
    port = url.get("port", 6380)
    server = RedisServer(STATE / "redis", port=port, acl_dir=acl_dir).start()
    (STATE / "redis.url").write_text(settings.redis_url)  # for services started by hand beside it
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
        """The new entries of all the streams, in the order they were written."""
        reply = self.client.xread(self.cursors, block=block_ms) or []
        out = []
        for stream, entries in reply:
            for entry_id, fields in entries:
                self.cursors[stream.decode()] = entry_id
                out.append((stream_id(entry_id), stream.decode(), fields))
        return [(stream, fields) for _, stream, fields in sorted(out, key=lambda e: e[0])]


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
    console.print("[bold]demo:[/] waiting for the services to load their models...")
    wait_for_consumers(client, ["transcriber", "face", "memory", "scribe"])
    console.print(
        f"[bold]demo:[/] the overlay is at [link]{overlay_url()}[/link]; open it to watch the cards"
    )
    run = time.strftime("%Y%m%d-%H%M%S")  # ids are idempotency keys: a new run needs new ones
    gap_s = float(env.get("CONVO_ENCOUNTER__GAP_S", 30))
    for i, folder in enumerate(build(STATE / "demo"), 1):
        console.print(f"\n[bold]demo:[/] playing {folder.name}")
        play(client, settings, env, folder / "audio.wav", folder / "frames", True, f"demo-{run}-{i}", gap_s)
    console.print(
        f"\n[bold]demo:[/] done. The people page is {overlay_url()}people (its token is printed above);"
        " `convo person list` shows the same, `convo status` the groups."
    )


def play(
    client: redis.Redis, settings: ServiceSettings, env: dict[str, str], audio: Path, frames: Path | None,
    realtime: bool, session: str, gap_s: float,
) -> bool:  # fmt: skip
    """One recording through a one-shot capture into the running stack; prints what was heard,
    the cards and what memory remembered, until it does (or gives up after ``gap_s`` + 60 s).
    True once the conversation was remembered."""
    s = settings.streams
    follow = StreamFollower(client, [s.transcripts, s.recalls, s.encounters])
    subprocess.run(
        [sys.executable, "-m", "services.capture", "--audio", str(audio), "--frames", str(frames or "none"),
         "--realtime" if realtime else "--no-realtime", "--session", session],
        env={**env, "CONVO_LOG_LEVEL": "WARNING"}, check=True,  # its progress is what is printed here
    )  # fmt: skip
    deadline = time.monotonic() + gap_s + 60
    shown: list[str] = []  # a card renewed while its person stays is printed once
    while time.monotonic() < deadline:  # until memory closes the conversation
        for stream, fields in follow.new(block_ms=1000):
            if show(stream, fields, settings, session, shown):
                return True
    return False


def show(
    stream: str, fields: dict[bytes, bytes], settings: ServiceSettings, session: str, shown: list[str]
) -> bool:
    """Print one entry of a replayed session's output; True for its finished conversation."""
    s = settings.streams
    if stream == s.transcripts:
        msg = TranscriptMessage.from_fields(fields)
        if msg.session == session:
            console.print(f"  [dim]heard:[/] {msg.text}")
    elif stream == s.recalls:
        card = RecallMessage.from_fields(fields)
        line = f"{card.summary}{f' ({card.note})' if card.note else ''}"
        if card.recall_id.startswith(f"{session}-") and line not in shown[-1:]:  # ids start with the session
            shown.append(line)
            console.print(f"  [bold green]overlay:[/] {line}")
    elif stream == s.encounters:
        encounter = EncounterMessage.from_fields(fields)
        if encounter.session == session:
            console.print(f"  [bold]remembered:[/] {encounter.summary}")
            return True
    return False


def replay(audio: Path, frames: Path | None, realtime: bool, session: str | None) -> int:
    """``convo replay``: a recording of your own into the stack that `convo up` runs."""
    from services.memory.settings import MemorySettings
    from shared.runtime import local_login

    settings = local_login(ServiceSettings())
    client = connect(settings, acl.ADMIN)
    try:
        wait_for_consumers(client, ["transcriber", "face", "memory", "scribe"], timeout_s=10)
    except RuntimeError as exc:
        console.print(f"[bold red]{exc}[/]: start the stack first (`make run`, or `convo up`)")
        return 1
    session = session or f"replay-{time.strftime('%Y%m%d-%H%M%S')}"
    gap_s = MemorySettings().encounter.gap_s
    console.print(
        f"[bold]replay:[/] {audio}{f' with {frames}' if frames else ''} as session {session}; memory "
        f"remembers the conversation {gap_s:.0f} s after it goes quiet (CONVO_ENCOUNTER__GAP_S)"
    )
    remembered = play(client, settings, dict(os.environ), audio, frames, realtime, session, gap_s)
    if not remembered:
        console.print(
            "[yellow]nothing remembered yet: no face, no speech, or memory is behind (`convo status`)[/]"
        )
    return 0


def supervisor_conf(procfile: Path, state: Path) -> Path:
    """supervisord's configuration for the Procfile's services, written to ``state``: each one is
    restarted when it exits (with supervisord's backoff when it keeps dying at start), stopped with
    SIGTERM, and logs to ``state/logs/<service>.log``."""
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sock = state / "supervisor.sock"
    lines = [
        "[supervisord]", "nodaemon=true", f"logfile={logs / 'supervisord.log'}",
        f"pidfile={state / 'supervisord.pid'}", f"childlogdir={logs}", "",
        "[unix_http_server]", f"file={sock}", "chmod=0700", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{sock}", "",
    ]  # fmt: skip
    for name, command in procfile_entries(procfile):
        lines += [
            f"[program:{name}]", f"command={command}", f"directory={REPO}",
            "autorestart=true", f"startsecs={START_S}", f"startretries={START_RETRIES}",
            "stopsignal=TERM", "stopwaitsecs=30", "redirect_stderr=true",
            f"stdout_logfile={logs / name}.log", "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=2",
            "",
        ]  # fmt: skip
    conf = state / "supervisord.conf"
    conf.write_text("\n".join(line.replace("%", "%%") for line in lines))
    return conf


def procfile_entries(procfile: Path) -> list[tuple[str, str]]:
    """``name: command`` lines; supervisord runs the command itself, so a leading ``exec`` goes."""
    out = []
    for line in procfile.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            out.append((name.strip(), command.strip().removeprefix("exec ")))
    return out


# What supervisord says about a service, as the terminal shows it.
EVENTS = [
    (re.compile(r"exited: (\S+) \((.*); not expected\)"), "[bold yellow]{0} stopped ({1}); restarting it[/]"),
    (re.compile(r"gave up: (\S+) entered FATAL"),
     "[bold red]{0} keeps failing; gave up (see `convo logs {0}`)[/]"),
    (re.compile(r"spawned: '(\S+)' with pid (\d+)"), "[dim]{0} started (pid {1})[/]"),
    (re.compile(r"success: (\S+) entered RUNNING"), None),
    (re.compile(r"Privileges were not dropped|without any HTTP authentication"), None),  # root; a 0700 socket
    (re.compile(r"received SIG\w+ indicating exit request"), None),  # the stop the user asked for
    (re.compile(r"(CRIT|WARN|ERRO)\w* (.*)"), "[yellow]supervisord: {1}[/]"),
]  # fmt: skip


def narrate(supervisor: subprocess.Popen, logs: Path, stop: threading.Event) -> list[threading.Thread]:
    """Show supervisord's restarts and each service's warnings and errors on the terminal; the
    full logs stay in the files (`convo logs`)."""

    def events() -> None:
        for line in supervisor.stdout:  # type: ignore[union-attr]
            for pattern, template in EVENTS:
                if m := pattern.search(line):
                    if template:
                        console.print(template.format(*m.groups()))
                    break

    def warnings() -> None:
        width = max((len(n) for n in ("transcriber", *[p.stem for p in logs.glob("*.log")])), default=11)
        for line in Follower(logs, from_end=True).follow(stop):
            if line.service != "supervisord" and line.level not in ("DEBUG", "INFO"):
                console.print(line.markup(width))

    threads = [threading.Thread(target=f, daemon=True) for f in (events, warnings)]
    for t in threads:
        t.start()
    return threads


def supervise(procfile: Path, env: dict[str, str], stop: threading.Event) -> subprocess.Popen:
    """supervisord running the Procfile's services, narrated on the terminal until ``stop``."""
    conf = supervisor_conf(procfile, STATE)
    supervisord = Path(sys.executable).with_name("supervisord")
    proc = subprocess.Popen(
        [str(supervisord), "-c", str(conf)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    where = LOGS.relative_to(REPO) if LOGS.is_relative_to(REPO) else LOGS
    console.print(f"services under supervisord; logs in {where}/ (`convo logs SERVICE -f`), warnings here")
    narrate(proc, LOGS, stop)
    return proc


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
    stop_follow = threading.Event()
    proc = supervise(procfile, env, stop_follow)
    asked_to_stop = False

    def stop(*_: object) -> None:  # a SIGTERM (systemd, CI) is passed on to supervisord
        nonlocal asked_to_stop
        asked_to_stop = True
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        if demo:
            play_demo(settings, env)
            console.print("[bold]the stack keeps running; Ctrl-C stops it.[/]")
        rc = proc.wait()
    except KeyboardInterrupt:  # a terminal's Ctrl-C reached supervisord too; a lone SIGINT did not
        asked_to_stop = True
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
    except subprocess.CalledProcessError:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        rc = 1
    finally:
        stop_follow.set()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        if server:
            server.stop()
    return 0 if asked_to_stop and rc in (0, -signal.SIGINT, -signal.SIGTERM) else rc
