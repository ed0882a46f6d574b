"""Bad input on every stream, from hypothesis, into the running stack: no service crashes, every
entry that is not a valid message ends in ``dlq``, and the good entries mixed in still come out."""

import contextlib
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.images import encode_jpeg
from shared.redis_server import free_port
from shared.schemas import (
    AudioSegmentMessage,
    BadMessageError,
    EncounterMessage,
    FaceMessage,
    FrameMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
    embedding_to_bytes,
)
from shared.streams import MemoryKeys
from tests.chaos.conftest import Stack, wait_until
from tests.face.conftest import photo
from tests.speech import RATE, SARAH, speech

pytestmark = pytest.mark.timeout(600)
MODELS: dict[str, type[StreamMessage]] = {
    "audio:segments": AudioSegmentMessage, "frames": FrameMessage, "transcripts": TranscriptMessage,
    "faces": FaceMessage, "encounters": EncounterMessage, "recalls": RecallMessage,
}  # fmt: skip
GROUPS = {"audio:segments": "transcriber", "frames": "face", "transcripts": "memory", "faces": "memory",
          "encounters": "trainer"}  # fmt: skip
ODD_VALUES = [
    b"",
    b"nan",
    b"NaN",
    b"inf",
    b"-1",
    b"1e309",
    b"99",
    b"null",
    b"[]",
    b"{}",
    b"\xff\xd8\xff",
    b"\x00" * 8,
]


def good_entries(n: int, audio: bytes, jpeg: bytes, size: tuple[int, int], vector: np.ndarray) -> list:
    """The n-th batch of valid messages, one per stream, all in the announced session ``fuzz``."""
    t = time.time()
    return [
        AudioSegmentMessage(segment_id=f"good-a{n}", session="fuzz", t_start=t, t_end=t + 3,
                            sample_rate=RATE, audio=audio),
        FrameMessage(frame_id=f"good-f{n}", session="fuzz", t=t, width=size[0], height=size[1], image=jpeg),
        TranscriptMessage(segment_id=f"good-t{n}", session="fuzz", t_start=t, t_end=t + 2,
                          text="I'm Sarah Chen from Stripe.", language="en", confidence=0.9, model="tiny.en"),
        FaceMessage(face_id=f"good-x{n}", frame_id=f"good-x{n}", session="fuzz", t=t, bbox=[0, 0, 50, 50],
                    det_score=0.9, embedding=embedding_to_bytes(vector)),
        EncounterMessage(encounter_id=f"good-e{n}", session="fuzz", person_id="p-fuzz", t_start=t - 60,
                         t_end=t, transcript="Hi, I'm Sarah Chen from Stripe.", summary="Met Sarah Chen."),
        RecallMessage(recall_id=f"good-r{n}", person_id="p-fuzz", name="Sarah Chen", summary="Sarah",
                      similarity=0.9, t=t),
    ]  # fmt: skip


def valid(client: redis.Redis, stream: str) -> list:
    out = []
    for _, fields in client.xrange(stream):
        with contextlib.suppress(BadMessageError):
            out.append(MODELS[stream].from_fields(fields))
    return out


def as_bytes(fields: dict) -> dict[bytes, bytes]:
    return {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in fields.items()
    }


def fields_for(stream: str, base: dict[str, bytes]) -> st.SearchStrategy[dict[bytes, bytes]]:
    """Random entries, and valid ones with one field broken, dropped or added."""
    value = st.one_of(
        st.binary(max_size=300), st.text(max_size=60).map(str.encode), st.sampled_from(ODD_VALUES)
    )
    names = st.one_of(st.sampled_from(sorted(base)), st.text(min_size=1, max_size=12).map(str.encode))
    anything = st.dictionaries(names, value, min_size=1, max_size=10)
    broken = st.tuples(st.sampled_from(sorted(base)), value).map(lambda kv: base | {kv[0]: kv[1]})
    dropped = st.sampled_from(sorted(base)).map(
        lambda k: {n: v for n, v in base.items() if n != k} or {b"x": b""}
    )
    added = st.tuples(names, value).map(lambda kv: base | {kv[0]: kv[1]})
    return st.one_of(anything, broken, dropped, added).map(as_bytes)


def test_fuzzed_entries_on_every_stream_end_in_dlq_and_good_ones_still_come_out(
    stack: Stack, admin: redis.Redis, tmp_path: Path
) -> None:
    audio = (np.clip(speech(SARAH, tmp_path), -1, 1) * 32767).astype("<i2").tobytes()
    image = photo("astronaut")
    jpeg, size = encode_jpeg(image, quality=90), (image.shape[1], image.shape[0])
    vector = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    vector /= np.linalg.norm(vector)
    port = free_port()
    stack.env |= {"CONVO_OVERLAY__PORT": str(port), "CONVO_OVERLAY__ADMIN_TOKEN": "fuzz",
                  "CONVO_CONSUMER__MAX_DELIVERIES": "2"}  # fmt: skip
    for service in ("transcriber", "face", "memory", "trainer", "overlay"):
        stack.start(service)
    admin.sadd(MemoryKeys.SESSIONS, "fuzz")
    stack.wait_ready(admin, ["transcriber", "face", "memory", "trainer"])
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, 60, "the overlay")
    events: list[str] = []

    def watch() -> None:  # an open overlay tab: the overlay reads recalls and transcripts only then
        try:
            with httpx.stream("GET", f"http://127.0.0.1:{port}/events", timeout=None) as res:
                for line in res.iter_lines():
                    events.append(line)
        except httpx.TransportError:
            return  # the overlay stopped at the end of the test

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(1)  # the tab is connected

    sent: list[tuple[str, bytes, dict[bytes, bytes]]] = []
    good: list[StreamMessage] = []

    def add_good(n: int) -> None:
        for msg in good_entries(n, audio, jpeg, size, vector):
            stream = next(s for s, m in MODELS.items() if isinstance(msg, m))
            admin.xadd(stream, msg.to_fields())
            good.append(msg)

    bases = {
        s: as_bytes(m.to_fields())
        for s, m in zip(MODELS, good_entries(0, audio[:3200], jpeg, size, vector), strict=True)
    }

    @settings(max_examples=150, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(MODELS)).flatmap(lambda s: st.tuples(st.just(s), fields_for(s, bases[s]))))
    def feed(entry: tuple[str, dict[bytes, bytes]]) -> None:
        stream, fields = entry
        sent.append((stream, admin.xadd(stream, fields), fields))

    add_good(1)
    feed()
    add_good(2)
    huge = bases["audio:segments"] | {b"audio": bytes(9 << 20)}  # over the 8 MB field limit
    sent.append(("audio:segments", admin.xadd("audio:segments", huge), huge))
    feed()
    add_good(3)

    def drained() -> bool:
        return all(
            g["pending"] == 0 and g["lag"] == 0
            for stream, group in GROUPS.items()
            for g in admin.xinfo_groups(stream)
            if g["name"].decode() == group
        )

    wait_until(drained, 400, "every group to finish its entries", every_s=1.0)
    time.sleep(2)
    assert not stack.crashed() and len(stack.live()) == 5, stack.tail()

    letters = {(f[b"stream"].decode(), f[b"id"]) for _, f in admin.xrange("dlq")}
    invalid = []
    for stream, entry_id, fields in sent:
        try:
            MODELS[stream].from_fields(fields)
        except BadMessageError:
            invalid.append((stream, entry_id))
    assert len(invalid) > 100, "most fuzzed entries are not valid messages"
    missing = [e for e in invalid if e not in letters and e[0] != "recalls"]
    assert not missing, f"{len(missing)} bad entries never reached dlq: {missing[:5]}"
    seen_by_overlay = [e for e in invalid if e[0] == "recalls" and e in letters]
    assert seen_by_overlay, "the overlay files bad recall entries it reads"

    transcripts = {m.segment_id for m in valid(admin, "transcripts")}  # the fuzz is on these streams too
    frames_done = {m.frame_id for m in valid(admin, "faces")}
    for n in (1, 2, 3):
        assert f"good-a{n}" in transcripts and f"good-f{n}" in frames_done
    assert any(m.recall_id.startswith("good-x") for m in valid(admin, "recalls"))
    rows = [json.loads(line) for line in (tmp_path / "dataset" / "rows-v1.jsonl").read_text().splitlines()]
    assert {f"good-e{n}" for n in (1, 2, 3)} <= {row["encounter_id"] for row in rows}
    assert any("good-r3" in e or "Sarah Chen" in e for e in events), "the overlay still serves good cards"
    by_stream = {s: sum(e[0] == s for e in invalid) for s in MODELS}
    print(f"fuzz: {len(sent)} entries, {len(invalid)} not valid messages (all in dlq): {by_stream}")
