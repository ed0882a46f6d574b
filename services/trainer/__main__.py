"""``python -m services.trainer [serve|train|export]``: training rows from encounters, and LoRA jobs."""

import typer

from services.trainer.handler import TrainerHandler
from services.trainer.settings import TrainerSettings
from shared.logs import configure_logging
from shared.runtime import Stage, connect, local_login, serve
from shared.schemas import EncounterMessage
from shared.streams import Groups

app = typer.Typer(no_args_is_help=False, add_completion=False)


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check", help="Exit 0 if a live consumer runs on this host."),
    burst: bool = typer.Option(False, "--burst", help="Exit 0 once the stream is drained."),
) -> None:
    """Read ``encounters`` into the dataset, and start a job when enough new rows have come."""
    if ctx.invoked_subcommand is not None:
        return
    settings = local_login(TrainerSettings())

    def build() -> Stage:
        handler = TrainerHandler(connect(settings, Groups.TRAINER), settings)
        return Stage({EncounterMessage: handler}, ticker=handler)

    raise typer.Exit(serve(settings, Groups.TRAINER, build, check, burst))


@app.command()
def train() -> None:
    """Run one training job now (what the service starts when enough rows have come)."""
    settings = local_login(TrainerSettings())
    configure_logging(settings.log_level, settings.log_format)
    from services.trainer.cli import run_training

    run_training(Groups.TRAINER)


if __name__ == "__main__":
    app()
