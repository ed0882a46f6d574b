"""``python -m services.capture``: mic or file replay + Silero VAD -> audio:segments; frames -> frames."""

import signal
import sys
import threading

import typer

from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings
from services.capture.sources import SourceError, list_mics
from shared.logs import configure_logging
from shared.publisher import Publisher
from shared.runtime import check as health_check
from shared.runtime import connect, local_login

app = typer.Typer(add_completion=False)


@app.command()
def main(
    audio: str | None = typer.Option(
        None, help="Audio source (overrides CONVO_AUDIO__SOURCE): mic, -, none, a file or dir."
    ),
    frames: str | None = typer.Option(
        None, help="Frame source (overrides CONVO_FRAMES__SOURCE): http, camera:N, a dir or video."
    ),
    realtime: bool | None = typer.Option(None, help="Replay files at real-time speed."),
    session: str | None = typer.Option(None, help="Session id for this run."),
    devices: bool = typer.Option(False, "--devices", help="List microphones and exit."),
    check: bool = typer.Option(False, "--check", help="Exit 0 if capture is alive on this host."),
) -> None:
    settings = local_login(CaptureSettings())
    overrides = {"source": audio, "realtime": realtime}
    settings.audio = settings.audio.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if frames is not None:
        settings.frames = settings.frames.model_copy(update={"source": frames})
    if session is not None:
        settings.session = session
    configure_logging(settings.log_level, settings.log_format)
    if devices:
        print("\n".join(list_mics()) or "no input devices")
        raise typer.Exit(0)
    if check:
        raise typer.Exit(health_check(settings, "capture"))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = connect(settings, "capture")
    publisher = Publisher(client, settings, stop)
    publisher.heartbeat("capture", settings.consumer_name)
    try:
        CaptureRunner(settings, publisher).run()
    except SourceError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
