"""The people API in-process on real Redis: the token, each admin action, health, metrics, the spec."""

import hypothesis
import hypothesis.strategies as st
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.memory.person_store import PersonStore
from services.overlay.app import create_app, ensure_admin_token
from services.overlay.settings import OverlaySettings, WebSettings
from shared.redis_server import RedisServer, free_port
from shared.streams import ADMIN_TOKEN_KEY, MemoryKeys
from tests.overlay.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def overlay_settings(redis_server: RedisServer) -> OverlaySettings:
    return OverlaySettings(redis_url=redis_server.url, overlay=WebSettings(admin_token=TOKEN))


@pytest.fixture
def app(r: redis.Redis, overlay_settings: OverlaySettings) -> FastAPI:
    return create_app(overlay_settings, r, TOKEN)


@pytest.fixture
def api(app: FastAPI) -> TestClient:
    return TestClient(app)


ADMIN_CALLS = [
    ("get", "/api/people", None),
    ("get", "/api/people/p-1", None),
    ("post", "/api/people/p-1/rename", {"name": "X"}),
    ("post", "/api/people/p-1/merge", {"other": "p-2"}),
    ("post", "/api/people/p-1/split", {"view_id": "v1"}),
    ("delete", "/api/people/p-1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
def test_admin_calls_need_the_token(api: TestClient, method: str, path: str, body: dict | None) -> None:
    kwargs = {"json": body} if body else {}
    missing = api.request(method, path, **kwargs)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = api.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
    assert wrong.status_code == 403
    good = api.request(method, path, headers=AUTH, **kwargs)
    assert good.status_code in (200, 404), good.text  # past the gate: p-1 does not exist


def test_people_list_search_show_and_every_change(
    api: TestClient, people: dict[str, str], store: PersonStore
) -> None:
    listed = api.get("/api/people", headers=AUTH).json()
    assert [p["name"] for p in listed] == ["", "Tom Berg", "Sarah Chen"]  # most recently seen first
    assert all(p["thumb"].startswith("data:image/jpeg;base64,") for p in listed)
    found = api.get("/api/people", params={"q": "payments"}, headers=AUTH).json()
    assert [p["id"] for p in found] == [people["sarah"]]

    sarah = api.get(f"/api/people/{people['sarah']}", headers=AUTH).json()
    assert sarah["company"] == "Stripe" and sarah["role"] == "engineer"
    assert sarah["summary"].startswith("Sarah Chen from Stripe — last met 3 days ago at the climbing gym")
    assert [e["id"] for e in sarah["history"]] == ["e-1"]
    assert {f["text"] for f in sarah["facts"]} == {"works on payments API", "rate limits"}

    renamed = api.post(f"/api/people/{people['stranger']}/rename", json={"name": "Lee Wong"}, headers=AUTH)
    assert renamed.json()["name"] == "Lee Wong"
    assert store.profile(people["stranger"]).name == "Lee Wong"

    merged = api.post(f"/api/people/{people['tom']}/merge", json={"other": people["stranger"]}, headers=AUTH)
    assert merged.status_code == 200 and merged.json()["views"] == 2
    assert people["stranger"] not in store.person_ids()
    view = sorted(api.get(f"/api/people/{people['tom']}", headers=AUTH).json()["view_ids"])[1]
    split = api.post(f"/api/people/{people['tom']}/split", json={"view_id": view}, headers=AUTH)
    assert split.status_code == 200 and split.json()["person_id"] in store.person_ids()
    only = api.post(f"/api/people/{people['sarah']}/split", json={"view_id": "v-none"}, headers=AUTH)
    assert only.status_code == 404

    removed = api.delete(f"/api/people/{people['sarah']}", headers=AUTH).json()["removed"]
    assert removed["encounters"] == 1 and removed["views"] == 1 and removed["facts"] == 2
    assert api.get(f"/api/people/{people['sarah']}", headers=AUTH).status_code == 404
    assert not store.redis.exists(MemoryKeys.person(people["sarah"]))


def test_merge_into_self_and_bad_ids_are_client_errors(api: TestClient, people: dict[str, str]) -> None:
    sarah = people["sarah"]
    assert api.post(f"/api/people/{sarah}/merge", json={"other": sarah}, headers=AUTH).status_code == 400
    assert api.post(f"/api/people/{sarah}/rename", json={"name": "  "}, headers=AUTH).status_code == 422
    assert api.get("/api/people/a%20b", headers=AUTH).status_code == 422


def test_health_metrics_and_the_spec(api: TestClient, overlay_settings: OverlaySettings) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "redis": True}
    assert "convo_overlay_clients" in api.get("/metrics").text
    spec = api.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/healthz", "/metrics", "/events", "/api/people", "/api/people/{pid}",
        "/api/people/{pid}/rename", "/api/people/{pid}/merge", "/api/people/{pid}/split",
        "/api/people/{pid}/different", "/api/people/suggestions",
    }  # fmt: skip
    assert "text/event-stream" in spec["paths"]["/events"]["get"]["responses"]["200"]["content"]
    assert {"401", "403", "404"} <= set(spec["paths"]["/api/people/{pid}"]["delete"]["responses"])
    for page in ("/", "/people"):
        assert api.get(page).headers["content-type"].startswith("text/html")

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    gone = TestClient(create_app(overlay_settings, dead, TOKEN)).get("/healthz")
    assert gone.status_code == 503 and gone.json()["redis"] is False


def test_a_token_is_made_once_and_kept(r: redis.Redis, redis_server: RedisServer) -> None:
    unset = OverlaySettings(redis_url=redis_server.url)
    first, made = ensure_admin_token(r, unset)
    again, made_again = ensure_admin_token(r, unset)
    assert made and not made_again and first == again and len(first) >= 32
    assert r.get(ADMIN_TOKEN_KEY) == first.encode()
    configured, _ = ensure_admin_token(
        r, OverlaySettings(redis_url=redis_server.url, overlay=WebSettings(admin_token="mine"))
    )
    assert configured == "mine"


def test_fuzz_the_api_for_server_errors(app: FastAPI, people: dict[str, str]) -> None:
    """Generated requests for every operation: never a 5xx, and every answer is what the spec says."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/events")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10

    operations.sort(key=lambda op: op.method == "delete")  # forgetting people last keeps them around

    for operation in operations:

        @hypothesis.given(case=operation.as_strategy(), who=st.sampled_from([None, *people.values()]))
        @hypothesis.settings(
            max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck)
        )
        def check(case: schemathesis.Case, who: str | None) -> None:
            if who and case.path_parameters:  # often a real person, so requests get past the 404
                case.path_parameters = {"pid": who}
            case.call_and_validate(headers=AUTH)

        check()
