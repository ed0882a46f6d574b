"""The trainer's ``convo`` commands: export, train, adapters."""

import typer
from rich.console import Console
from rich.table import Table

from shared.acl import ADMIN
from shared.runtime import admin_client, connect, local_login

console = Console()


def export() -> None:
    """Write the training rows as a train/eval snapshot (JSONL, split by person) and print where."""
    from services.trainer.dataset import Dataset
    from services.trainer.settings import TrainerSettings

    out = Dataset(TrainerSettings().dataset).export()
    console.print(
        f"{out.dir}: {len(out.train)} train rows, {len(out.eval)} eval rows, {len(out.persons)} persons"
    )


def train() -> None:
    """Run one LoRA training job now on every row there is (one job at a time)."""
    run_training(ADMIN)


def run_training(user: str) -> None:
    """One training job as Redis user ``user``: an operator's, or the trainer service's."""
    from services.trainer.job import JobRunningError, NoRowsError, run_job
    from services.trainer.settings import TrainerSettings

    settings = local_login(TrainerSettings())
    try:
        a = run_job(connect(settings, user), settings).adapter
    except JobRunningError as exc:
        console.print(str(exc))
        raise typer.Exit(2) from None
    except NoRowsError as exc:
        console.print(f"{exc}: the trainer learns from remembered conversations (`convo export` lists them)")
        raise typer.Exit(1) from None
    console.print(
        f"adapter v{a.version} at {a.path}: eval loss {a.eval_loss_before:.3f} -> {a.eval_loss_after:.3f}"
    )


def adapters() -> None:
    """Trained adapters, newest first, and whether any holds data of a forgotten person."""
    from services.trainer.registry import AdapterRegistry

    client, _ = admin_client()
    table = Table(title="adapters")
    for col in ("version", "base model", "rows", "persons", "eval loss before → after", "path", "note"):
        table.add_column(col, overflow="fold")
    entries = AdapterRegistry(client).list()
    for a in entries:
        loss = f"{float(a['eval_loss_before']):.3f} → {float(a['eval_loss_after']):.3f}"
        note = "contains forgotten data: `convo train` retrains without it" if a["forgotten"] else ""
        table.add_row(a["version"], a["base_model"], a["rows"], str(a["persons"]), loss, a["path"], note)
    console.print(table)
