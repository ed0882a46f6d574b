"""`make run` as a user runs it: `convo up --demo` starts every service as its own process under
supervisord, plays the three demo meetings in real time, and Sarah's recall card comes out of
``recalls`` and over the overlay's event stream. Ctrl-C then stops everything cleanly."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import redis

from services.trainer.dataset import Dataset
from services.trainer.settings import DatasetSettings
from shared.redis_server import RedisServer, free_port
from shared.schemas import EncounterMessage, RecallMessage


def test_make_run_demo_shows_sarahs_card_and_stops_cleanly(
    r: redis.Redis, redis_server: RedisServer, artifacts: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ, "CONVO_REDIS_URL": redis_server.url, "CONVO_OVERLAY__PORT": str(port),
        "CONVO_FRAMES__HTTP_PORT": str(free_port()), "CONVO_OVERLAY__ADMIN_TOKEN": "e2e",
        "CONVO_DATASET__DIR": str(tmp_path / "dataset"), "CONVO_STATE_DIR": str(tmp_path / "state"),
    }  # fmt: skip
    convo = Path(sys.executable).with_name("convo")
    started = time.time()
    proc = subprocess.Popen(
        [str(convo), "up", "--demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,  # its own process group, as a terminal gives it
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any("demo: done" in line for line in lines):
            assert proc.poll() is None, "".join(lines[-40:])
            assert time.monotonic() < deadline, "the demo did not finish:\n" + "".join(lines[-40:])
            time.sleep(0.5)
        with httpx.stream("GET", f"http://127.0.0.1:{port}/events", timeout=10) as res:
            assert res.status_code == 200  # the overlay is up and serving the live stream
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rc = proc.wait(60)
        reader.join(5)
    output = "".join(lines)
    assert rc == 0, output[-3000:]

    cards = [(eid, RecallMessage.from_fields(f)) for eid, f in r.xrange("recalls")]
    sarah = [(eid, c) for eid, c in cards if c.name == "Sarah Chen" and c.last_met > 0]
    assert sarah, output[-3000:]
    entry_id, card = sarah[0]
    assert card.company == "Stripe" and card.place == "climbing gym"
    assert card.summary.startswith("Sarah Chen from Stripe — last met")
    assert f"overlay: {card.summary}" in " ".join(output.split())
    card_s = int(entry_id.split(b"-")[0]) / 1000 - card.t  # frame taken -> card written
    encounters = [EncounterMessage.from_fields(f) for _, f in r.xrange("encounters")]
    assert len(encounters) == 3 and encounters[0].person_id == encounters[2].person_id
    (artifacts / "e2e.json").write_text(
        json.dumps({"frame_to_card_s": card_s, "demo_s": time.time() - started})
    )
    print(f"demo through the process stack in {time.time() - started:.0f} s; frame -> card {card_s:.2f} s")

    rows = Dataset(DatasetSettings(dir=tmp_path / "dataset")).rows()
    assert {row.encounter_id for row in rows} == {e.encounter_id for e in encounters}, "the trainer has them"

    for stream in ("audio:segments", "frames", "transcripts", "faces", "encounters"):
        for group in r.xinfo_groups(stream):
            assert group["pending"] == 0 and group["lag"] == 0, (stream, group)  # every group drained


def test_local_stack_restarts_a_killed_service(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A SIGKILLed service comes back on its own and the terminal says so; the others keep running;
    Ctrl-C still stops everything with status 0 and leaves no process behind."""
    procfile = tmp_path / "Procfile"
    procfile.write_text("face: exec python -m services.face\nmemory: exec python -m services.memory\n")
    env = {**os.environ, "CONVO_REDIS_URL": redis_server.url, "CONVO_STATE_DIR": str(tmp_path / "state")}
    convo = Path(sys.executable).with_name("convo")
    proc = subprocess.Popen(
        [str(convo), "up", "--procfile", str(procfile)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()  # `r` was flushed: no heartbeat of an earlier test's services is left

    def pids(group: str) -> set[int]:
        return {int(k.rsplit(b"-", 1)[1]) for k in r.scan_iter(f"convo:heartbeat:{group}:*")}

    def wait(what: str, ready: Callable[[], bool], timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.poll() is None, "".join(lines[-40:])
            assert time.monotonic() < deadline, f"{what}:\n" + "".join(lines[-40:])
            time.sleep(0.3)

    try:
        wait("face and memory did not start", lambda: bool(pids("face") and pids("memory")))
        (face,), memory = pids("face"), pids("memory")
        os.kill(face, signal.SIGKILL)
        killed = time.monotonic()
        wait("face was not restarted", lambda: bool(pids("face") - {face}))
        print(f"face back, consuming with its model loaded, {time.monotonic() - killed:.1f} s after SIGKILL")
        wait("the terminal did not say so", lambda: any("face stopped" in line for line in lines), 10)
        assert pids("memory") == memory, "memory kept running"
        log = tmp_path / "state" / "logs" / "face.log"
        assert log.read_text().count("face consumer ") >= 2, "both runs logged to the service's file"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rc = proc.wait(90)
        reader.join(5)
    output = "".join(lines)
    assert rc == 0, output[-3000:]
    assert "restarting it" in output, output[-3000:]
    for pid in pids("face") | pids("memory") | memory:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid


def test_services_started_by_hand_find_the_local_stack_users(tmp_path: Path) -> None:
    """README's "Running the pieces yourself" beside `make run`: a service started by hand logs in
    as its own user of the local stack, with no CONVO_ACL_DIR (it retried "Authentication
    required" forever before)."""
    from shared import acl
    from shared.settings import ServiceSettings
    from tests.speech import SARAH, speech, write_wav

    state, port = tmp_path / "state", free_port()
    url = f"redis://127.0.0.1:{port}/0"
    acl.write(ServiceSettings(redis_url=url), state / "acl")
    (state / "redis.url").write_text(url)  # as `convo up` notes the stack it started
    meeting = write_wav(tmp_path / "meeting.wav", speech(SARAH, tmp_path))
    with RedisServer(tmp_path / "redis", port=port, acl_dir=state / "acl") as server:
        env = {**os.environ, "CONVO_STATE_DIR": str(state), "CONVO_REDIS_URL": url}
        env.pop("CONVO_ACL_DIR", None)
        for command in (["services.capture", "--audio", str(meeting)], ["services.memory", "--burst"]):
            done = subprocess.run(
                [sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert "Authentication required" not in done.stderr
        admin = server.client()
        assert admin.xlen("audio:segments") == 1
        groups = {g["name"]: g for g in admin.xinfo_groups("transcripts")}
        assert b"memory" in groups, "memory logged in and made its group"


def test_convo_replay_plays_your_own_recording_into_the_running_stack(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A recording (here espeak-ng, as an .m4a-free WAV) and a folder of photos into the stack that
    `convo up` runs: what was heard, the card, and what memory remembered are printed."""
    import cv2

    from tests.face.conftest import photo
    from tests.speech import speech, write_wav

    meeting = write_wav(
        tmp_path / "meeting.wav",
        np.concatenate([np.zeros(8000, np.float32), speech("Hi, I'm Maya Patel from Figma.", tmp_path)]),
    )
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "maya.jpg"), photo("astronaut"))
    procfile = tmp_path / "Procfile"
    procfile.write_text(
        "".join(f"{s}: exec python -m services.{s}\n" for s in ("transcriber", "face", "memory", "scribe"))
    )
    env = {
        **os.environ, "CONVO_REDIS_URL": redis_server.url, "CONVO_STATE_DIR": str(tmp_path / "state"),
        "CONVO_ENCOUNTER__GAP_S": "3",
    }  # fmt: skip
    convo = str(Path(sys.executable).with_name("convo"))
    stack = subprocess.Popen(
        [convo, "up", "--procfile", str(procfile)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [convo, "replay", str(meeting), "--frames", str(tmp_path / "photos"), "--session", "mine"],
            env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(90)
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "heard: Hi, I'm Maya Patel from Figma" in out, out
    assert "overlay:" in out and "remembered: Met Maya Patel from Figma." in out, out
    assert [e.session for _, f in r.xrange("encounters") for e in [EncounterMessage.from_fields(f)]] == [
        "mine"
    ]
