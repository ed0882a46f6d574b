"""Segments through the transcriber stage with 1 and 2 replicas, against raw WhisperModel.transcribe.

All three runs use the packaged tiny.en weights (int8, one CPU thread per replica) on the
same espeak-ng segments in the same run. Replicas are real processes on one consumer
group; each run is timed from the first XADD to the last transcript. Also reports the
Silero VAD cost per 512-sample chunk.
"""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import private_redis, report
from services.capture.model import SileroVadModel
from services.capture.sources import chunked
from services.transcriber.model import packaged_tiny_en
from shared.schemas import AudioSegmentMessage
from shared.streams import heartbeat_key
from tests.speech import RATE, speech

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Hi, I'm Sarah Chen from Stripe.", "We met at the climbing gym last week.", "How is the new job going?",
    "I moved to the payments team in March.", "Let's get coffee on Friday.", "Tom runs a bakery in town.",
]  # fmt: skip
ROUNDS = 2


def segments(tmp: Path) -> list[np.ndarray]:
    return [speech(text, tmp) for text in SENTENCES] * ROUNDS


def raw(audios: list[np.ndarray]) -> float:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(packaged_tiny_en()), device="cpu", compute_type="int8", cpu_threads=1)
    list(model.transcribe(audios[0], beam_size=5)[0])  # warm-up, as the replicas warm up on load
    start = time.perf_counter()
    for audio in audios:
        list(model.transcribe(audio, beam_size=5, condition_on_previous_text=False)[0])
    return time.perf_counter() - start


def pipeline(url: str, audios: list[np.ndarray], replicas: int, run: str) -> float:
    r = redis.Redis.from_url(url)
    r.flushall()
    env = {
        **os.environ,
        "CONVO_REDIS_URL": url,
        "CONVO_WHISPER__CPU_THREADS": "1",
        "CONVO_CONSUMER__BATCH_SIZE": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "services.transcriber"], cwd=REPO, env=env, stderr=subprocess.DEVNULL
        )
        for _ in range(replicas)
    ]
    try:
        while len(list(r.scan_iter(heartbeat_key("transcriber")))) < replicas:
            time.sleep(0.1)
        # Warm each replica on one segment, as raw() is warmed.
        for i in range(replicas):
            r.xadd("audio:segments", message(audios[0], f"{run}-warm{i}").to_fields())
        while (
            r.xpending("audio:segments", "transcriber")["pending"]
            or r.xinfo_groups("audio:segments")[0]["lag"]
        ):
            time.sleep(0.05)
        done = r.xlen("transcripts")
        start = time.perf_counter()
        for i, audio in enumerate(audios):
            r.xadd("audio:segments", message(audio, f"{run}-{i}").to_fields())
        while r.xlen("transcripts") < done + len(audios):
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def message(audio: np.ndarray, segment_id: str) -> AudioSegmentMessage:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return AudioSegmentMessage(
        segment_id=segment_id,
        session="bench",
        t_start=0,
        t_end=len(audio) / RATE,
        sample_rate=RATE,
        audio=pcm,
    )


def vad_ms_per_chunk(audios: list[np.ndarray]) -> float:
    vad = SileroVadModel().load()
    chunks = [c for a in audios for c in chunked(a)]
    start = time.perf_counter()
    for chunk in chunks:
        vad.predict(chunk)
    return (time.perf_counter() - start) / len(chunks) * 1000


def main() -> None:
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        audios = segments(Path(tmp))
    seconds = sum(len(a) for a in audios) / RATE
    raw_s = raw(audios)
    with private_redis() as server:
        one_s = pipeline(server.url, audios, 1, "one")
        two_s = pipeline(server.url, audios, 2, "two")
    vad_ms = vad_ms_per_chunk(audios)
    print(f"{len(audios)} segments, {seconds:.1f} s of speech; {os.cpu_count()} CPUs")
    print(f"raw transcribe {raw_s:.2f} s | 1 replica {one_s:.2f} s | 2 replicas {two_s:.2f} s")
    print(f"Silero VAD: {vad_ms:.3f} ms per 32 ms chunk")
    report(
        "transcriber", ratio_pipeline_vs_raw=raw_s / one_s, replicas2_speedup=one_s / two_s,
        rtf=one_s / seconds, vad_ms_per_chunk=vad_ms,
    )  # fmt: skip


if __name__ == "__main__":
    main()
