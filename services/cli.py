"""``convo``: the composition root. Streams, dead letters, ACLs and the local stack live here;
each service adds its own commands (``services/memory/cli.py``, ``services/trainer/cli.py``)."""

from pathlib import Path
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from services.memory import cli as memory_cli
from services.memory.cli import app as person_app
from services.trainer import cli as trainer_cli
from services.voice.cli import app as wearer_app
from shared.acl import ADMIN
from shared.runtime import admin_client
from shared.schemas import MESSAGE_TYPES
from shared.settings import ServiceSettings

app = typer.Typer(help="Conversationalist: streams, dead letters and the local stack.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: entries that could not be handled.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(person_app, name="person")
app.add_typer(wearer_app, name="wearer")
app.command()(memory_cli.calibrate)
for command in (trainer_cli.export, trainer_cli.train, trainer_cli.adapters):
    app.command()(command)
console = Console()

REPO = Path(__file__).resolve().parents[1]


def _s(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    every: Annotated[float, typer.Option(help="Seconds between the samples the rates come from.")] = 1.0,
) -> None:
    """Per stage: consumers alive (with a heartbeat), pending, lag, dead letters and entries per
    second; each stream's length under the table."""
    from rich.live import Live

    from services.status import measure

    client, settings = admin_client()
    if not watch:
        console.print(measure(client, settings, every))
        return
    with Live(measure(client, settings, every), console=console, refresh_per_second=2) as live:
        try:
            while True:
                live.update(measure(client, settings, every))
        except KeyboardInterrupt:
            pass


def _summarise(stream_attr: str | None, fields: dict[bytes, bytes]) -> str:
    model = MESSAGE_TYPES.get(stream_attr or "")
    kinds = model.field_kinds() if model else {}
    parts = []
    for key, value in fields.items():
        name = _s(key)
        binary = kinds.get(name) == "bytes"
        if not binary:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                binary = True
        parts.append(f"{name}=<{len(value)} bytes>" if binary else f"{name}={text[:200]!r}")
    return " ".join(parts)


@app.command()
def tail(
    stream: Annotated[str, typer.Argument(help="Stream name, e.g. transcripts or audio:segments.")],
    last: Annotated[int, typer.Option(help="Show this many existing entries first.")] = 0,
    count: Annotated[int, typer.Option(help="Exit after this many entries (0: follow forever).")] = 0,
) -> None:
    """Follow a stream live; binary fields are shown as their size."""
    client, settings = admin_client()
    attr = next((k for k, v in settings.streams.model_dump().items() if v == stream), None)
    shown = 0
    cursor = "$"
    if last:
        history = list(reversed(client.xrevrange(stream, count=last)))
        for entry_id, fields in history:
            console.print(f"[bold]{_s(entry_id)}[/] {_summarise(attr, fields)}", highlight=False)
            shown += 1
        cursor = _s(history[-1][0]) if history else "$"
    while not count or shown < count:
        reply = client.xread({stream: cursor}, block=1000, count=100)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                console.print(f"[bold]{_s(entry_id)}[/] {_summarise(attr, fields)}", highlight=False)
                cursor = _s(entry_id)
                shown += 1


@dlq_app.command("list")
def dlq_list(count: Annotated[int, typer.Option(help="At most this many letters.")] = 50) -> None:
    """Dead letters, oldest first, with where they came from and why they failed."""
    client, settings = admin_client()
    table = Table(title=f"{settings.streams.dlq} ({client.xlen(settings.streams.dlq)} letters)")
    for col in ("dlq id", "stream", "entry id", "group", "deliveries", "error"):
        table.add_column(col, overflow="fold")
    for entry_id, f in client.xrange(settings.streams.dlq, count=count):
        # a letter capture filed (an unreadable file, say) has no group and no deliveries
        fields = (f.get(k, b"") for k in (b"stream", b"id", b"group", b"deliveries", b"error"))
        table.add_row(_s(entry_id), *(_s(x) for x in fields))
    console.print(table)


def _letters(
    client: redis.Redis, dlq: str, ids: list[str], all_: bool
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    if all_:
        return client.xrange(dlq)
    if not ids:
        raise typer.BadParameter("name dlq ids, or pass --all")
    found = [client.xrange(dlq, i, i) for i in ids]
    missing = [i for i, f in zip(ids, found, strict=True) if not f]
    if missing:
        raise typer.BadParameter(f"no such dead letter: {', '.join(missing)}")
    return [f[0] for f in found]


@dlq_app.command("retry")
def dlq_retry(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (from `convo dlq list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Put letters back on their original stream as new entries, and remove them from the DLQ."""
    client, settings = admin_client()
    streams = set(settings.streams.model_dump().values())
    for entry_id, f in _letters(client, settings.streams.dlq, ids or [], all_):
        if _s(f.get(b"stream", b"")) not in streams:  # a file capture could not read, a conversation
            console.print(f"kept {_s(entry_id)}: it came from {_s(f.get(b'stream', b'?'))}, not a stream")
            continue
        original = {k[2:]: v for k, v in f.items() if k.startswith(b"f.")}
        with client.pipeline(transaction=True) as pipe:  # one step: never on both, never on neither
            pipe.xadd(_s(f[b"stream"]), original)
            pipe.xdel(settings.streams.dlq, entry_id)
            new_id, _ = pipe.execute()
        console.print(f"retried {_s(entry_id)} -> {_s(f[b'stream'])} {_s(new_id)}")


@dlq_app.command("drop")
def dlq_drop(
    ids: Annotated[list[str] | None, typer.Argument(help="Dead-letter ids (from `convo dlq list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
) -> None:
    """Delete letters for good."""
    client, settings = admin_client()
    letters = _letters(client, settings.streams.dlq, ids or [], all_)
    if letters:
        client.xdel(settings.streams.dlq, *[entry_id for entry_id, _ in letters])
    console.print(f"dropped {len(letters)} dead letters")


@app.command()
def acl(
    acl_dir: Annotated[
        Path | None, typer.Option("--dir", help="Where to write (default: CONVO_ACL_DIR, else .convo/acl).")
    ] = None,
    show: Annotated[bool, typer.Option(help="Print each user's rules (no secrets).")] = False,
) -> None:
    """Write ``users.acl``: one Redis user per service, from the stream contracts; keeps passwords."""
    from shared import acl as acls

    settings = ServiceSettings()
    target = acl_dir or settings.acl_dir or REPO / ".convo" / "acl"
    path = acls.write(settings, target)
    console.print(f"wrote {path}; passwords in {target}/<user>.pass ({', '.join([ADMIN, *acls.USERS])})")
    if show:
        for grant in acls.GRANTS:
            console.print(f"[bold]{grant.user}[/]: {acls.rules(grant, settings)}", soft_wrap=True)


@app.command()
def gc(
    raw_s: Annotated[
        float | None, typer.Option(help="Retention window for raw audio and frames (default: the setting).")
    ] = None,
) -> None:
    """Apply retention now: the window on raw audio and frames, the cap on every other stream.

    Nothing a consumer group has not acknowledged is removed; the table says which groups held a trim back.
    """
    from shared.retention import gc as collect

    client, settings = admin_client()
    window = settings.retention.raw_s if raw_s is None else raw_s
    table = Table(title=f"gc: raw streams older than {window:.0f} s, others to their caps")
    for col in ("stream", "before", "removed", "after", "held back by"):
        table.add_column(col, justify="right" if col in ("before", "removed", "after") else "left")
    trimmed = collect(client, settings, window)
    for t in trimmed:
        after = t.before - t.removed
        table.add_row(t.stream, str(t.before), str(t.removed), str(after), ", ".join(t.held_by))
    console.print(table)
    console.print(f"removed {sum(t.removed for t in trimmed)} entries")


@app.command("eval")
def eval_(
    scenes: Annotated[Path, typer.Argument(help="A folder of scene YAML files (see tests/scenes/).")],
    realtime: Annotated[
        bool, typer.Option(help="Replay at real-time speed: also measures time to card.")
    ] = False,
    page: Annotated[
        bool, typer.Option(help="Read the cards from the overlay page in headless Chromium, as worn.")
    ] = True,
    voice: Annotated[bool, typer.Option(help="Run the voice stage: memory hears who speaks.")] = True,
) -> None:
    """The identity scorecard: replay scenes through the real stages on a private Redis and score them."""
    from services.evaluation import evaluate

    card = evaluate(scenes, realtime, page=page, voice=voice)
    table = Table(title=f"scenes in {scenes}")
    table.add_column("scene", no_wrap=True)
    cols = ("identity", "attribution", "name", "company", "facts", "WER", "me/them", "persons added", "notes")
    for col in cols:
        table.add_column(col, overflow="fold")
    for x in card.scores:
        cells = [
            x.scene, _fmt(x.identity), _fmt(x.attribution), f"{x.names[0]}/{x.names[1]}",
            f"{x.companies[0]}/{x.companies[1]}", f"{x.facts[0]}/{x.facts[1]}",
            _fmt(x.words[0] / x.words[1] if x.words[1] else None), f"{x.me_them[0]}/{x.me_them[1]}",
            "" if x.persons_added is None else str(x.persons_added), "; ".join(x.notes),
        ]  # fmt: skip
        table.add_row(*cells)
    console.print(table)
    print("eval " + " ".join(f"{k}={v:.3g}" for k, v in card.figures().items()))  # one line, for scripts


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


@app.command("env-example")
def env_example() -> None:
    """Print every setting with its default (the content of .env.example)."""
    from services.envfile import all_service_settings, render_env_example

    print(render_env_example(all_service_settings()), end="")


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Play the demo conversation once the services are up.")] = False,
    procfile: Annotated[Path, typer.Option(help="Which services to run (name: command).")] = REPO
    / "Procfile",
) -> None:
    """Run every service under supervisord, which restarts one that dies; start a private
    redis-server unless CONVO_REDIS_URL is set."""
    from services.stack import up as run_stack

    raise typer.Exit(run_stack(demo, procfile))


@app.command()
def replay(
    audio: Annotated[
        Path, typer.Argument(help="A recording: any format ffmpeg reads (WAV, M4A from a phone...).")
    ],
    frames: Annotated[
        Path | None, typer.Option(help="A folder of photos (spread over the recording) or a video.")
    ] = None,
    realtime: Annotated[
        bool, typer.Option(help="At the speed it was spoken (cards appear as they would).")
    ] = False,
    session: Annotated[str | None, typer.Option(help="Session id (default: replay-<time>).")] = None,
) -> None:
    """Replay your own meeting into the running stack and print what was heard, the cards and
    what memory remembered, as the demo does."""
    from services.stack import replay as run_replay

    if not audio.exists():
        raise typer.BadParameter(f"no such file or folder: {audio}")
    raise typer.Exit(run_replay(audio, frames, realtime, session))


@app.command()
def doctor() -> None:
    """Check the set-up: Redis, espeak-ng, PyAV, Chromium, the model files, the ACL files, the
    ports and the GPU; say what is wrong and how to fix it. Exits 1 if something will not run."""
    from services.doctor import FAIL, OK, run_checks

    checks = run_checks()
    table = Table(title="convo doctor")
    for col in ("check", "", "what was found", "fix"):
        table.add_column(col, overflow="fold")
    style = {OK: "green", FAIL: "bold red"}
    for c in checks:
        table.add_row(c.name, f"[{style.get(c.status, 'yellow')}]{c.status}[/]", c.detail, c.fix)
    console.print(table)
    failed = [c.name for c in checks if c.status == FAIL]
    console.print(
        f"[bold red]{len(failed)} to fix:[/] {', '.join(failed)}" if failed else "[green]all set[/]"
    )
    raise typer.Exit(1 if failed else 0)


@app.command()
def logs(
    service: Annotated[
        str | None, typer.Argument(help="One service; all of them interleaved when left out.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines to show first.")] = 40,
) -> None:
    """The local stack's logs (`.convo/logs/<service>.log`, written while `convo up` runs)."""
    import threading

    from services.logfiles import Follower, tail
    from services.stack import LOGS

    wanted = [service] if service else None
    if service and not (LOGS / f"{service}.log").exists():
        known = ", ".join(sorted(p.stem for p in LOGS.glob("*.log"))) or "none yet (is `convo up` running?)"
        raise typer.BadParameter(f"no log for {service!r} in {LOGS}; there are: {known}")
    out = Console(highlight=False)
    for line in tail(LOGS, wanted, lines):
        out.print(line.markup())
    if follow:
        try:
            for line in Follower(LOGS, services=wanted).follow(threading.Event()):
                out.print(line.markup())
        except KeyboardInterrupt:
            pass


def main() -> None:
    """``convo``: the app, with a plain answer instead of a traceback when Redis is not there."""
    try:
        app()
    except redis.ConnectionError as exc:
        url = ServiceSettings().redis_url
        console.print(f"[bold red]no Redis answers on {url}[/] ({exc}). Start the stack with `make run`, "
                      "or point CONVO_REDIS_URL at yours.")  # fmt: skip
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
