"""The compose file validates with the compose tool at hand and has the shape the stack relies on."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[1]
SCALABLE = ["transcriber", "face", "voice", "memory", "scribe"]
GPU = ["transcriber", "face", "voice", "trainer"]


def compose_command() -> list[str]:
    """``docker compose`` (v2) when its plugin is there, else Debian's ``docker-compose`` (v1)."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither compose v2 nor docker-compose: run `make setup`"
    return ["docker-compose"]


@pytest.fixture(scope="module")
def resolved() -> dict:
    cmd = [*compose_command(), "-f", "docker-compose.yml"]
    check = subprocess.run([*cmd, "config", "-q"], cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    out = subprocess.run([*cmd, "config"], cwd=REPO, capture_output=True, text=True, check=True)
    return yaml.safe_load(out.stdout)


def test_every_stage_has_a_service_with_restart_healthcheck_and_redis(resolved: dict) -> None:
    services = resolved["services"]
    procfile = [line.split(":")[0] for line in (REPO / "Procfile").read_text().splitlines() if line.strip()]
    assert set(procfile) <= set(services), "every service of the local stack is in compose too"
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["image"] == "redis:8"
    for name in procfile:
        service = services[name]
        assert service["restart"] == "unless-stopped"
        assert f"services.{name}" in " ".join(service["healthcheck"]["test"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["CONVO_REDIS_URL"] == "redis://redis:6379/0"
        dockerfile = (REPO / service["build"]["dockerfile"]).read_text()
        assert f" AS {service['build']['target']}\n" in dockerfile, f"{name}: no such build stage"


def test_scalable_services_have_no_fixed_name_or_port_and_gpus_are_reserved(resolved: dict) -> None:
    for name in SCALABLE:
        service = resolved["services"][name]
        assert "container_name" not in service and "ports" not in service
    for name in GPU:
        service = resolved["services"][name]
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"]


def test_every_service_logs_in_as_its_own_acl_user(resolved: dict) -> None:
    from shared.acl import USERS

    services = resolved["services"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--aclfile") + 1] == "/acl/users.acl"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "always"
    assert services["acl"]["command"][:2] == ["convo", "acl"]
    assert services["redis"]["depends_on"]["acl"]["condition"] == "service_completed_successfully"
    procfile = [line.split(":")[0] for line in (REPO / "Procfile").read_text().splitlines() if line.strip()]
    assert set(procfile) <= set(USERS), "users.acl has a user for every service"
    for name in procfile:
        service = services[name]
        assert service["environment"]["CONVO_ACL_DIR"] == "/acl"
        assert any(
            str(v).startswith("acl:/acl") or (isinstance(v, dict) and v.get("source") == "acl")
            for v in service["volumes"]
        ), name
