"""Every command of the README, as written, against the stack that `make run` starts.

The stack runs as `convo up` does (its own redis-server with one ACL user per service, state in
`.convo/`), in a folder laid out like a checkout (`.venv/` and `tests/` linked to this one) that
holds the files the commands name: `meeting.wav`, `photos/`, `me.wav`. Three things are
filled in, as a reader would: a dead letter's and a person's `<id>`, and the port in the
`redis-cli` line (the stack runs on a free port here, not 6380, so that a stack of your own is
never touched). A command that runs until stopped (a service, `--watch`, `-f`, `tail`) must
still be running and have done its work after a while. The few that cannot run here are named
below with the reason, and the test fails if the README gains a command that is in neither list.
"""

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import redis

from shared.redis_server import free_port
from shared.streams import MemoryKeys, heartbeat_key
from tests.face.conftest import photo
from tests.speech import RATE, speech, write_wav

pytestmark = pytest.mark.timeout(1500)
REPO = Path(__file__).parents[2]
NOT_HERE = {
    "make run": "runs until Ctrl-C; test_stack.py runs what it runs (`convo up --demo`) and stops it",
    "make test": "this test is part of it",
    ".venv/bin/python -m services.capture --audio mic --frames http": "needs a microphone",
    "docker compose up -d": "no Docker engine here; test_compose.py checks the file with the compose tool",
    "docker compose up -d --scale transcriber=3": "no Docker engine here",
    'docker compose exec redis sh -c \'redis-cli --user admin --pass "$(cat /acl/admin.pass)" '
    "XINFO GROUPS audio:segments'": "no Docker engine here",
}


def until_stopped(command: str) -> bool:
    """A service, or a view that follows the stack (``--watch``, ``-f``, ``tail``)."""
    if "python -m services." in command:
        return "--check" not in command and "--audio meeting.wav" not in command
    return any(mark in command for mark in ("--watch", " -f", "convo tail "))


def readme_commands() -> list[str]:
    """Each command line of the README's ``sh`` blocks, without its comment."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip()]


def checkout(tmp: Path) -> Path:
    """A folder laid out like a checkout, with the files the README's commands name."""
    root = tmp / "checkout"
    root.mkdir()
    (root / ".venv").symlink_to(REPO / ".venv")
    (root / "tests").symlink_to(REPO / "tests")
    pause = np.zeros(RATE // 2, np.float32)
    meeting = [pause, speech("Hi, I'm Maya Patel from Figma.", tmp), pause]
    write_wav(root / "meeting.wav", np.concatenate([*meeting, speech("I work on design tools.", tmp), pause]))
    write_wav(root / "me.wav", speech("Hello, I am the wearer, and this is my own voice.", tmp))
    (root / "photos").mkdir()
    cv2.imwrite(str(root / "photos" / "maya.jpg"), photo("astronaut"))
    return root


def filled(command: str, client: redis.Redis, port: int) -> str:
    """The command with what a reader fills in."""
    if "<id>" in command and "dlq" in command:
        return command.replace("<id>|--all", "--all")
    if "person forget <id>" in command:
        persons = sorted(p.decode() for p in client.smembers(MemoryKeys.PERSONS))
        return command.replace("<id>", persons[0])
    return command.replace("-p 6380", f"-p {port}")


def run(command: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """A command that ends; ``y`` answers a question it asks (`person forget` asks before it forgets)."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        input="y\n",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def keeps_running(command: str, cwd: Path, env: dict[str, str], done: Callable[[], bool]) -> str:
    """Start a command that runs until stopped; it must do ``done()`` and still run; then stop it."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    alive, did = proc.poll() is None, done()
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert alive and did, f"{command!r} stopped or did nothing:\n{out[-2000:]}"
    assert "Traceback" not in out, f"{command!r}:\n{out[-3000:]}"
    return out


def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 30 and set(NOT_HERE) <= set(commands), "the README changed: update NOT_HERE"
    root = checkout(tmp_path)
    port = free_port()
    state = root / ".convo"
    env = {
        **os.environ, "CONVO_REDIS_URL": f"redis://127.0.0.1:{port}/0", "CONVO_STATE_DIR": str(state),
        "CONVO_OVERLAY__PORT": str(free_port()), "CONVO_FRAMES__HTTP_PORT": str(free_port()),
        "CONVO_ENCOUNTER__GAP_S": "3", "CONVO_DATASET__DIR": str(state / "dataset"), "COLUMNS": "120",
    }  # fmt: skip
    stack = subprocess.Popen(
        [str(root / ".venv" / "bin" / "convo"), "up"], cwd=root, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        admin = wait_for_stack(root, port)
        for command in commands:
            if command in NOT_HERE:
                continue
            command = filled(command, admin, port)
            if until_stopped(command):
                mine = {**env, "CONVO_OVERLAY__PORT": str(free_port())}  # the stack's overlay holds its port
                keeps_running(command, root, mine, done_when(command, admin, mine))
                continue
            done = run(command, root, env, timeout=900)
            assert done.returncode == 0, f"{command!r} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
            assert "Traceback" not in done.stdout + done.stderr, command
            check_output(command, done.stdout, admin)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(90)


def wait_for_stack(root: Path, port: int) -> redis.Redis:
    """The stack's Redis as its admin, once every service of the Procfile has a live consumer."""
    deadline = time.monotonic() + 300
    password = root / ".convo" / "acl" / "admin.pass"
    while not password.exists():
        assert time.monotonic() < deadline, "convo up did not start its Redis"
        time.sleep(0.5)
    admin = redis.Redis(port=port, username="admin", password=password.read_text().strip())
    groups = ["transcriber", "face", "voice", "memory", "scribe", "trainer"]
    while missing := [g for g in groups if next(admin.scan_iter(heartbeat_key(g)), None) is None]:
        assert time.monotonic() < deadline, f"no consumer of {missing} came up"
        time.sleep(1)
    return admin


def done_when(command: str, admin: redis.Redis, env: dict[str, str]) -> Callable[[], bool]:
    """What a command that runs until stopped must have done before it is stopped."""
    started = time.monotonic()
    if "python -m services.overlay" in command:
        return lambda: serves(f"http://127.0.0.1:{env['CONVO_OVERLAY__PORT']}/healthz")
    if "python -m services." in command:
        group = command.split("services.")[1].split()[0]
        before = len(list(admin.scan_iter(heartbeat_key(group))))
        return lambda: len(list(admin.scan_iter(heartbeat_key(group)))) > before
    return lambda: time.monotonic() - started > 8  # a view: alive and printing after 8 s


def serves(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def check_output(command: str, out: str, admin: redis.Redis) -> None:
    """What a command that ends must have printed or done."""
    text = " ".join(out.split())
    expected = {
        "convo replay meeting.wav": "remembered:",
        "convo doctor": "redis-server",
        "convo status": "stage",
        "convo dlq list": "letters)",
        "convo person list": "Maya Patel",
        "convo calibrate": "threshold",
        "convo person forget": "views:",
        "convo wearer enroll": "enrolled",
        "convo eval tests/scenes": "identity",
        "convo export": "train rows",
        "convo train": "adapter v",
        "convo gc": "",
        "XINFO GROUPS": "transcriber",
    }
    for key, want in expected.items():
        if key in command:
            assert want.lower() in text.lower(), f"{command!r} printed:\n{out[-2000:]}"
    if "services.capture --audio meeting.wav" in command:
        assert admin.xlen("audio:segments") > 0
