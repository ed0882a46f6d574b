"""The people page and its API: look at, correct and forget the people memory knows."""

import secrets
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from services.memory.admin import PersonAdmin
from services.overlay.api import (
    AUTH_RESPONSES,
    NOT_FOUND,
    ForgetResult,
    MergeRequest,
    Person,
    PersonDetail,
    Problem,
    RenameRequest,
    SplitRequest,
    SplitResult,
    Suggestion,
)

ADMIN = Counter("convo_overlay_admin_total", "People API changes", ["action"])

PersonId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:\-]{1,200}$", description="A person id, e.g. p-1a2b3c")
]
bearer = HTTPBearer(auto_error=False)


def authorised(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    if creds is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(creds.credentials.encode(), request.app.state.token.encode()):
        raise HTTPException(403, "wrong bearer token")


def get_admin(request: Request) -> PersonAdmin:
    return request.app.state.admin


Admin = Annotated[PersonAdmin, Depends(get_admin)]
page = APIRouter()
router = APIRouter(prefix="/api/people", dependencies=[Depends(authorised)], responses=AUTH_RESPONSES)


def _profile(admin: PersonAdmin, pid: str) -> Person:
    try:
        return Person.of(admin.repo.get(pid))
    except KeyError:
        raise HTTPException(404, f"no person {pid}") from None


@page.get("/people", response_class=HTMLResponse, include_in_schema=False)
def people_page() -> str:
    return (files("services.overlay") / "static" / "people.html").read_text()


@router.get("")
def list_people(
    admin: Admin,
    q: Annotated[str, Query(max_length=200, description="Search names, companies and facts")] = "",
    candidates: Annotated[bool, Query(description="The candidates instead: faces not yet people")] = False,
) -> list[Person]:
    """Every person memory knows, most recently seen first."""
    return [Person.of(p) for p in admin.list(candidates) if not q or p.mentions(q)]


@router.get("/suggestions")
def suggestions(admin: Admin) -> list[Suggestion]:
    """Pairs of people that may be one person, most alike first, without those already answered."""
    out = []
    for pair in admin.review.suggestions():
        a, b = Person.of(admin.repo.get(pair.a)), Person.of(admin.repo.get(pair.b))
        out.append(Suggestion(a=a, b=b, score=round(pair.score, 3)))
    return out


@router.post("/{pid}/different", responses=NOT_FOUND)
def different(pid: PersonId, body: MergeRequest, admin: Admin) -> Person:
    """``other`` is a different person: remembered as a label, and no longer suggested."""
    _profile(admin, pid), _profile(admin, body.other)
    admin.different(pid, body.other)
    ADMIN.labels("different").inc()
    return _profile(admin, pid)


@router.get("/{pid}", responses=NOT_FOUND)
def show_person(pid: PersonId, admin: Admin) -> PersonDetail:
    """One person with what the card says now, their views and every conversation."""
    try:
        p = admin.show(pid)
    except KeyError:
        raise HTTPException(404, f"no person {pid}") from None
    history = [e for eid in reversed(p.encounter_ids) if (e := admin.repo.encounter(eid))]
    return PersonDetail.of_detail(p, history)


@router.post("/{pid}/rename", responses=NOT_FOUND)
def rename(pid: PersonId, body: RenameRequest, admin: Admin) -> Person:
    """Set the person's name."""
    _profile(admin, pid)
    admin.rename(pid, body.name)
    ADMIN.labels("rename").inc()
    return _profile(admin, pid)


@router.post("/{pid}/merge", responses=NOT_FOUND | {400: {"model": Problem, "description": "Same person"}})
def merge(pid: PersonId, body: MergeRequest, admin: Admin) -> Person:
    """``other`` was this person all along: their views, facts and conversations move here."""
    _profile(admin, pid), _profile(admin, body.other)
    if pid == body.other:
        raise HTTPException(400, "cannot merge a person into themselves")
    admin.merge(pid, body.other)
    ADMIN.labels("merge").inc()
    return _profile(admin, pid)


@router.post("/{pid}/split", responses=NOT_FOUND | {400: {"model": Problem, "description": "The only view"}})
def split(pid: PersonId, body: SplitRequest, admin: Admin) -> SplitResult:
    """Not this person: move one face view out into a new person."""
    _profile(admin, pid)
    try:
        new = admin.split(pid, body.view_id)
    except KeyError:
        raise HTTPException(404, f"{pid} has no view {body.view_id}") from None
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    ADMIN.labels("split").inc()
    return SplitResult(person_id=new)


@router.delete("/{pid}", responses=NOT_FOUND)
def forget(pid: PersonId, admin: Admin) -> ForgetResult:
    """Forget the person everywhere: views, facts, conversations and stream entries."""
    _profile(admin, pid)
    removed = admin.forget(pid)
    ADMIN.labels("forget").inc()
    return ForgetResult(removed=removed)
