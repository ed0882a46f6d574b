"""Memory's ``convo person`` commands: look at the people memory knows, correct them, forget them."""

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.acl import ADMIN
from shared.runtime import connect, local_login

if TYPE_CHECKING:
    from services.memory.admin import PersonAdmin

app = typer.Typer(help="The people memory knows: look, correct, forget.", no_args_is_help=True)
console = Console()


def _admin() -> "PersonAdmin":
    # Imported here: faiss and the trainer's dataset are not needed by `convo status`.
    from services.memory.admin import PersonAdmin
    from services.memory.person_store import PersonStore
    from services.memory.settings import MemorySettings

    settings = local_login(MemorySettings())
    store = PersonStore(connect(settings, ADMIN), settings.match)
    return PersonAdmin(store, settings.streams, settings.dataset)


@app.command("list")
def person_list() -> None:
    """Everyone, most recently seen first (not the candidates: `convo person candidates`)."""
    _table("people", candidates=False)


@app.command("candidates")
def person_candidates() -> None:
    """Faces seen but not yet people: never talked to, named or seen across sessions; they expire."""
    _table("candidates (expire unless talked to, named, or seen again in another session)", candidates=True)


def _table(title: str, candidates: bool) -> None:
    table = Table(title=title)
    for col in ("id", "name", "company", "encounters", "views", "last seen", "facts"):
        table.add_column(col, overflow="fold")
    for p in _admin().list(candidates=candidates):
        last = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.last_seen))
        facts = "; ".join(f.text for f in p.facts[:3])
        table.add_row(p.id, p.name or "?", p.company, str(p.encounters), str(p.views), last, facts)
    console.print(table)


@app.command("show")
def person_show(person_id: str) -> None:
    """One person: what the overlay would say, facts with where they came from, encounters."""
    p = _admin().show(person_id)
    console.print(f"[bold]{p.summary}[/]")
    for fact in p.facts:
        console.print(f"  {fact.kind}: {fact.text}  [dim](from {fact.source})[/]")
    console.print(f"  encounters: {', '.join(p.encounter_ids) or 'none'}")
    console.print(f"  face views: {', '.join(p.view_ids)}")


@app.command("rename")
def person_rename(person_id: str, name: str) -> None:
    """Set a person's name."""
    _admin().rename(person_id, name)
    console.print(f"{person_id} is now {name}")


@app.command("merge")
def person_merge(keep: str, drop: str) -> None:
    """Two ids are one person: DROP's views, facts and encounters move to KEEP."""
    _admin().merge(keep, drop)
    console.print(f"merged {drop} into {keep}")


@app.command("split")
def person_split(person_id: str, view_id: str) -> None:
    """Not this person: move one face view (see `convo person show`) to a new person."""
    console.print(f"moved {view_id} to {_admin().split(person_id, view_id)}")


@app.command("forget")
def person_forget(
    person_id: str, yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False
) -> None:
    """Remove a person everywhere: faces, facts, conversations and the stream entries that hold them."""
    if not yes:
        typer.confirm(f"Forget {person_id} everywhere? This cannot be undone.", abort=True)
    for what, n in sorted(_admin().forget(person_id).items()):
        console.print(f"  {what}: {n}")


@app.command("suggest")
def person_suggest() -> None:
    """Pairs that may be one person, most alike first: `convo person merge` or `convo person different`."""
    admin = _admin()
    table = Table(title="maybe the same person")
    for col in ("a", "b", "likeness"):
        table.add_column(col)
    for pair in admin.review.suggestions():
        a, b = admin.repo.get(pair.a), admin.repo.get(pair.b)
        table.add_row(f"{a.name or '?'} ({a.id})", f"{b.name or '?'} ({b.id})", f"{pair.score:.2f}")
    console.print(table)


@app.command("different")
def person_different(a: str, b: str) -> None:
    """A and B are different people: remembered as a label, and no longer suggested."""
    _admin().different(a, b)
    console.print(f"{a} and {b} are different people")


def calibrate() -> None:
    """How the match threshold fares on your own answers (merges and "different"), and a better one."""
    c = _admin().review.calibrate()
    console.print(
        f"{c.labels} answers ({c.same} same person, {c.different} different people).\n"
        f"threshold {c.threshold:.2f}: {c.false_accepts} false accepts, {c.false_rejects} false rejects\n"
        f"suggested {c.suggested:.2f}: {c.suggested_false_accepts} false accepts, "
        f"{c.suggested_false_rejects} false rejects (set CONVO_MATCH__THRESHOLD; a false accept counts twice)"
    )
