"""`make run` as a user runs it: `convo up --demo` starts every service as its own process under
honcho, plays the three demo meetings in real time, and Sarah's recall card comes out of
``recalls`` and over the overlay's event stream. Ctrl-C then stops everything cleanly."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
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
        "CONVO_DATASET__DIR": str(tmp_path / "dataset"),
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
