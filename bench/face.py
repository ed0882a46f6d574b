"""Frames through the face stage (stream, shared loop, handler) against raw FaceAnalysis.get.

Both see the same JPEG frames of real photos (1 and 6 faces) in the same run; the raw
side decodes each JPEG and calls ``FaceAnalysis.get`` on it, the pipeline reads the
frames from Redis, batches them and publishes every face with its thumbnail. Those frames
share one capture time, so no face reuses an embedding there. Then a crowd (the team photo)
at 2 frames a second in one session, as capture sends it: the handler with embedding reuse
against the same handler with it off (``reuse_s`` 0).
"""

import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bench_settings, private_redis, report
from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.face.settings import FaceModelSettings
from shared.consumer import Consumer
from shared.schemas import FrameMessage
from tests.face.conftest import frame, photo

ROUNDS = 15
CROWD_FRAMES = 12


def main() -> None:
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore", category=FutureWarning)
    frames = [frame(photo(name), f"{name}-{i}") for i in range(ROUNDS) for name in ("astronaut", "t1")]
    with tempfile.TemporaryDirectory() as root, private_redis() as server:
        pack = FacePackModel(FaceModelSettings(model_root=Path(root))).load()
        handler = FaceHandler(pack.settings, pack)
        handler(frames[0])  # warm both paths on the same sessions
        start = time.perf_counter()
        raw_faces = 0
        for f in frames:
            image = cv2.imdecode(np.frombuffer(f.image, np.uint8), cv2.IMREAD_COLOR)
            raw_faces += len(pack.app.get(image))  # type: ignore[union-attr]
        raw_s = time.perf_counter() - start

        r = redis.Redis.from_url(server.url)
        for f in frames:
            r.xadd("frames", f.to_fields())
        start = time.perf_counter()
        stats = Consumer(r, bench_settings(server, batch_size=4), "face", {FrameMessage: handler}).run(
            burst=True
        )
        loop_s = time.perf_counter() - start
        assert stats.processed == len(frames) and r.xlen("faces") == raw_faces, (stats, raw_faces)
        reuse_ms, fresh_ms = crowd(pack, reuse_s=2.0), crowd(pack, reuse_s=0.0)
    n = len(frames)
    raw_ms, loop_ms = raw_s / n * 1000, loop_s / n * 1000
    print(f"{n} frames, {raw_faces} faces: raw {raw_ms:.1f} ms/frame, pipeline {loop_ms:.1f} ms/frame")
    print(
        f"a crowd at 2 fps: {reuse_ms:.0f} ms/frame reusing embeddings, {fresh_ms:.0f} ms/frame embedding all"
    )
    report(
        "face", ratio_pipeline_vs_raw=raw_s / loop_s, ms_per_frame=loop_ms, raw_ms_per_frame=raw_ms,
        crowd_ratio_reuse_vs_not=fresh_ms / reuse_ms,
    )  # fmt: skip


def crowd(pack: FacePackModel, reuse_s: float) -> float:
    """ms per frame of CROWD_FRAMES frames of the team photo, 0.5 s apart in one session."""
    handler = FaceHandler(pack.settings.model_copy(update={"reuse_s": reuse_s}), pack)
    team = frame(photo("players"), "team")
    frames = [
        team.model_copy(update={"frame_id": f"team-{i}", "t": 100 + i / 2}) for i in range(CROWD_FRAMES)
    ]
    start = time.perf_counter()
    faces = sum(len(handler(f)) for f in frames)
    assert faces >= 15 * CROWD_FRAMES
    return (time.perf_counter() - start) / len(frames) * 1000


if __name__ == "__main__":
    main()
