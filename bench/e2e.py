"""Glass to glance: what the wearer waits for, read from the overlay page in headless Chromium.

A recording of ten short conversations (espeak speech; real faces, one person at a time, who
turns to the wearer half a second before speaking) is played at real-time speed through
capture replay into the whole stack as ``make run`` starts it: transcriber, face, voice,
memory and scribe as processes, the overlay with its page open in Chromium, Redis with the
AOF fsynced on every write. The scribe extracts through the Anthropic SDK from an endpoint
that takes ``SLOW_S`` per answer, so conversations are being written down while the next
one's cards are made.

- speech end -> text: from the sample at which an utterance's speech ends (its last loud
  sample, known from the recording) until its transcript is on the page.
- word -> page while speech goes on: for a word every 0.25 s of the long utterances, from when
  it was said until the page first shows words of its utterance heard up to it (live words
  from a partial, or the transcript when that comes first).
- face -> card: from the capture time of the first frame capture sends of a conversation
  (held from just before the speech began) until the card of that person is on the page.
- Per stage, from stream entry ids: the VAD's wait (the ``min_silence_ms`` of silence it must
  hear before it cuts), capture (the rest of speech end, or frame time, to the entry),
  transcriber or face, memory, and the overlay (entry to the page).
"""

import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable
from contextlib import ExitStack
from http.server import ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report
from services.capture.model import SileroVadModel
from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings
from services.face.model import FacePackModel
from services.face.settings import FaceModelSettings
from services.pagewatch import Line, PageWatch, Shown
from shared.images import encode_jpeg
from shared.publisher import Publisher
from shared.redis_server import RedisServer, free_port
from shared.schemas import FrameMessage, RecallMessage, TranscriptMessage
from shared.streams import heartbeat_key
from tests.chaos.conftest import person_crops
from tests.face.conftest import photo
from tests.memory.test_extract import Scripted, tool_answer
from tests.speech import RATE, speech, voiced_span, write_wav

SLOW_S = 3.0
GAP_S = 3.0
PEOPLE = 5
CONVERSATIONS = 10  # two meetings with each person: the second card is a known person's
LINES = [
    "Hi, good to see you.",
    "I have been working on the new payments service for the last two years, mostly on rate limits.",
    "Let's talk soon.",
]
SERVICES = ("transcriber", "face", "voice", "memory", "scribe")
FPS = 2.0
LOOK_AHEAD_S = 0.5  # the person turns to the wearer this long before speaking
SESSION = "bench-e2e"


def scene(tmp: Path, people: list[np.ndarray]) -> tuple[Path, list[tuple[float, float]], list[float]]:
    """The recording: its WAV and frames, each utterance's (start, speech end) offset, and each
    conversation's start offset."""
    pause, silence = np.zeros(int(0.8 * RATE), np.float32), np.zeros(int((GAP_S + 1.5) * RATE), np.float32)
    clips = [speech(text, tmp) for text in LINES]
    parts, spans, starts, at = [silence], [], [], len(silence) / RATE
    for _ in range(CONVERSATIONS):
        starts.append(at)
        for clip in clips:
            lo, hi = voiced_span(clip)
            spans.append((at + lo, at + hi))
            parts += [clip, pause]
            at += (len(clip) + len(pause)) / RATE
        parts.append(silence)
        at += len(silence) / RATE
    write_wav(tmp / "audio.wav", np.concatenate(parts))
    (tmp / "frames").mkdir()
    empty = cv2.resize(photo("coffee"), (640, 480))
    shots = [encode_jpeg(empty, quality=85)] + [encode_jpeg(framed(p), quality=85) for p in people]
    for i in range(int(at * FPS)):
        t = i / FPS
        k = next((k for k, s in enumerate(starts) if s - LOOK_AHEAD_S <= t < s + talk_s(spans, k)), None)
        (tmp / "frames" / f"{i:05d}.jpg").write_bytes(shots[0 if k is None else 1 + k % len(people)])
    return tmp / "audio.wav", spans, starts


def talk_s(spans: list[tuple[float, float]], k: int) -> float:
    """How long conversation ``k`` lasts, from its first utterance's start to its last's end."""
    mine = spans[k * len(LINES) : (k + 1) * len(LINES)]
    return mine[-1][1] - mine[0][0] + 1.0


def framed(face: np.ndarray) -> np.ndarray:
    """A person filling the middle of a 640x480 view."""
    canvas = np.zeros((480, 640, 3), np.uint8)
    h, w = face.shape[:2]
    scale = 400 / max(h, w)
    face = cv2.resize(face, (int(w * scale), int(h * scale)))
    y, x = (480 - face.shape[0]) // 2, (640 - face.shape[1]) // 2
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    return canvas


def slow_claude() -> tuple[str, ThreadingHTTPServer]:
    """An Anthropic Messages endpoint that answers every request after ``SLOW_S``."""
    Scripted.script = [(200, tool_answer({"topics": ["payments"]}), SLOW_S)] * (4 * CONVERSATIONS)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def entries(client: redis.Redis, stream: str) -> list[tuple[float, dict[bytes, bytes]]]:
    """(time written, fields) of every entry."""
    return [(int(i.split(b"-")[0]) / 1000, f) for i, f in client.xrange(stream)]


def pct(values: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return float(p50), float(p95)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        folder = Path(tmp)
        pack = FacePackModel(FaceModelSettings(model_root=folder / "insightface")).load()
        wav, spans, starts = scene(folder, person_crops(pack)[:PEOPLE])
        del pack
        server = stack.enter_context(RedisServer(folder / "redis"))  # AOF, fsync always: as shipped
        client = redis.Redis.from_url(server.url)
        claude, api = slow_claude()
        stack.callback(api.shutdown)
        env = {
            **os.environ, "CONVO_REDIS_URL": server.url, "CONVO_ENCOUNTER__GAP_S": str(GAP_S),
            "CONVO_EXTRACT__BACKEND": "anthropic", "CONVO_EXTRACT__ANTHROPIC_API_KEY": "bench",
            "CONVO_EXTRACT__ANTHROPIC_BASE_URL": claude, "CONVO_EXTRACT__MAX_RETRIES": "0",
            "CONVO_LOG_LEVEL": "WARNING",
        }  # fmt: skip
        env.pop("CONVO_ACL_DIR", None)
        ports = {s: free_port() for s in SERVICES}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", f"services.{s}"], env={**env, "CONVO_METRICS_PORT": str(ports[s])}
            )
            for s in SERVICES
        ]
        try:
            deadline = time.monotonic() + 300
            while not all(next(client.scan_iter(heartbeat_key(g)), None) for g in SERVICES):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "services died"
                time.sleep(0.3)
            watch = stack.enter_context(PageWatch(server.url))
            capture = CaptureSettings(redis_url=server.url, session=SESSION)
            capture.frames = capture.frames.model_copy(update={"source": str(folder / "frames")})
            capture.audio = capture.audio.model_copy(update={"realtime": True})
            runner = CaptureRunner(capture, Publisher(client, capture, threading.Event()), SileroVadModel())
            t0 = time.time()
            runner.handler.start_clock(t0)
            runner.replay(wav)
            deadline = time.monotonic() + 60
            while client.xlen("encounters") < CONVERSATIONS and time.monotonic() < deadline:
                time.sleep(0.5)
            texts, cards = watch.lines(t0), watch.cards(t0)
            handling = handler_means(ports.values())
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
        to_text, split_text = text_latency(client, [t0 + hi for _, hi in spans], texts)
        to_card, split_card = card_latency(client, [t0 + s for s in starts], cards)
        split_text = queued(split_text, "transcriber", handling[("transcriber", "audio:segments")])
        split_card = queued(split_card, "face", handling[("face", "frames")])
        to_word = word_latency(client, [(t0 + lo, t0 + hi) for lo, hi in spans], texts)
        splits = {"speech end -> text": split_text, "face -> card": split_card}
        print_figures(to_text, to_card, to_word, splits, client.xlen("encounters"))


Split = dict[str, list[float]]


def text_latency(client: redis.Redis, ends: list[float], lines: list[Line]) -> tuple[list[float], Split]:
    """Per transcript line on the page: seconds from the end of the speech it holds, and per stage."""
    segments = {f[b"segment_id"].decode(): t for t, f in entries(client, "audio:segments")}
    transcripts = {
        (m := TranscriptMessage.from_fields(f)).segment_id: (t, m) for t, f in entries(client, "transcripts")
    }
    out: list[float] = []
    split: Split = {"vad wait": [], "capture": [], "transcriber": [], "overlay": []}
    # the VAD cuts once it has heard min_silence_ms of silence after the speech: that much of
    # the time is the audio itself, the rest is capture's work
    wait = CaptureSettings().vad.min_silence_ms / 1000
    for line in lines:
        if line.partial or line.segment not in transcripts:
            continue
        written_at, msg = transcripts[line.segment]
        said = [e for e in ends if msg.t_start <= e <= msg.t_end + 0.05]
        if not said:
            continue
        end = max(said)
        out.append(line.t - end)
        split["vad wait"].append(min(wait, segments[line.segment] - end))
        split["capture"].append(segments[line.segment] - end - split["vad wait"][-1])
        split["transcriber"].append(written_at - segments[line.segment])
        split["overlay"].append(line.t - written_at)
    return out, split


def word_latency(client: redis.Redis, spans: list[tuple[float, float]], lines: list[Line]) -> list[float]:
    """For a word every 0.25 s of speech longer than 2 s: seconds from when it was said until the
    page first shows words of its utterance heard up to it (live words, or the transcript)."""
    heard = {
        m.segment_id: (m.t_start, m.t_end)
        for _, f in entries(client, "transcripts")
        for m in [TranscriptMessage.from_fields(f)]
    }
    out: list[float] = []
    for start, end in spans:
        if end - start < 2.0:
            continue
        for w in np.arange(start + 0.25, end, 0.25):
            shown = [x.t for x in lines if x.segment in heard and heard[x.segment][0] <= w <= x.until]
            if shown:
                out.append(min(shown) - w)
    return out


def card_latency(client: redis.Redis, starts: list[float], cards: list[Shown]) -> tuple[list[float], Split]:
    """Per conversation: seconds from its first frame sent until its person's card is on the page."""
    frames = [(t, FrameMessage.from_fields(f)) for t, f in entries(client, "frames")]
    faces = {f[b"frame_id"].decode(): t for t, f in reversed(entries(client, "faces"))}
    recalls = [(t, RecallMessage.from_fields(f)) for t, f in entries(client, "recalls")]
    out: list[float] = []
    split: Split = {"capture": [], "face": [], "memory": [], "overlay": []}
    for start in starts:
        first = next(((t, m) for t, m in frames if m.t >= start - LOOK_AHEAD_S - 0.05), None)
        if first is None:
            continue
        sent, frame = first
        card = next(((t, r) for t, r in recalls if r.t >= frame.t and r.person_id), None)
        shown = card and next(
            (c for c in cards if c.shown and c.person == card[1].person_id and c.t >= card[0]), None
        )
        if card is None or shown is None:
            continue
        found = faces.get(frame.frame_id, sent)
        out.append(shown.t - frame.t)
        split["capture"].append(sent - frame.t)
        split["face"].append(found - sent)
        split["memory"].append(card[0] - found)
        split["overlay"].append(shown.t - card[0])
    return out, split


def handler_means(ports: Iterable[int]) -> dict[tuple[str, str], float]:
    """Mean seconds in the handler per entry, by (group, stream), from each service's Prometheus
    histogram: the time a stage spends on an entry's own work, without its wait in the stream."""
    out: dict[tuple[str, str], float] = {}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        totals: dict[tuple[str, str], list[float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples if family.name == "convo_handler_seconds" else []:
                at = totals.setdefault((sample.labels["stage"], sample.labels["stream"]), [0.0, 0.0])
                if sample.name.endswith("_sum"):
                    at[0] = sample.value
                elif sample.name.endswith("_count"):
                    at[1] = sample.value
        out |= {key: total / count for key, (total, count) in totals.items() if count}
    return out


def queued(split: Split, stage: str, handled: float) -> Split:
    """The split with a stage's time cut into its wait for the stage (queue) and the handler's own work."""
    out: Split = {}
    for name, values in split.items():
        if name != stage:
            out[name] = values
            continue
        out[f"{stage} queue"] = [max(0.0, w - handled) for w in values]
        out[f"{stage} work"] = [min(w, handled) for w in values]
    return out


def print_figures(
    to_text: list[float], to_card: list[float], to_word: list[float], splits: dict[str, Split], written: int
) -> None:
    print(f"{len(to_text)} lines and {len(to_card)} cards read from the page; {written} encounters written")
    print(f"the scribe's extraction answered after {SLOW_S:.0f} s each, while the next conversation went on")
    for name, split in splits.items():
        print(f"{name}: mean s per stage " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in split.items()))
    p50_text, p95_text = pct(to_text)
    p50_card, p95_card = pct(to_card)
    p50_word, p95_word = pct(to_word)
    print(f"word said -> on the page while speech goes on: p50 {p50_word:.2f} s, p95 {p95_word:.2f} s")
    print(f"speech end -> text on the page: p50 {p50_text:.2f} s, p95 {p95_text:.2f} s (goal p95 < 1.0 s)")
    print(f"face -> card on the page: p50 {p50_card:.2f} s, p95 {p95_card:.2f} s (goal p95 < 0.3 s)")
    report(
        "e2e",
        p50_speech_end_to_text_s=p50_text,
        p95_speech_end_to_text_s=p95_text,
        p95_word_to_partial_s=p95_word,
        p50_face_to_card_s=p50_card,
        p95_face_to_card_s=p95_card,
        encounters=written,
    )


if __name__ == "__main__":
    main()
