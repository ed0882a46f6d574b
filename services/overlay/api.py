"""The people API's request and response models (the OpenAPI schema)."""

import base64
from typing import Any, Self

from pydantic import BaseModel, Field

from services.memory import records
from services.memory.admin import PersonDetail as AdminDetail
from services.memory.records import Fact


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else ""


class Person(BaseModel):
    id: str
    name: str
    company: str
    role: str
    first_seen: float
    last_seen: float
    encounters: int
    views: int
    facts: list[Fact]
    thumb: str = Field(description="A data: URL of the newest face thumbnail, or empty")

    @classmethod
    def of(cls, p: records.Person) -> Self:
        return cls(**p.model_dump(include=set(cls.model_fields) - {"thumb"}), thumb=data_url(p.thumb))


class Encounter(BaseModel):
    id: str
    session: str
    t_start: float
    t_end: float
    summary: str
    place: str
    topics: list[str]
    open_threads: list[str]
    backend: str
    transcript: str


class PersonDetail(Person):
    summary: str = Field(description="What the recall card says about them now")
    view_ids: list[str] = Field(description="Stored face views; one can be split off as 'not this person'")
    history: list[Encounter]

    @classmethod
    def of_detail(cls, p: AdminDetail, history: list[records.Encounter]) -> Self:
        person = Person.of(p).model_dump()
        encounters = [Encounter(**e.model_dump(include=set(Encounter.model_fields))) for e in history]
        return cls(**person, summary=p.summary, view_ids=p.view_ids, history=encounters)


class Suggestion(BaseModel):
    a: Person
    b: Person
    score: float = Field(description="Cosine of their most alike face views")


class RenameRequest(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"\S")


class MergeRequest(BaseModel):
    other: str = Field(min_length=1, max_length=200, description="The person to fold into this one")


class SplitRequest(BaseModel):
    view_id: str = Field(min_length=1, max_length=200)


class SplitResult(BaseModel):
    person_id: str = Field(description="The new person holding the view")


class ForgetResult(BaseModel):
    removed: dict[str, int] = Field(description="What was deleted, by kind and stream")


class Health(BaseModel):
    status: str
    redis: bool


class Problem(BaseModel):
    detail: str


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "No bearer token"},
    403: {"model": Problem, "description": "Wrong bearer token"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such person"}}
