"""The demo conversation of `make run`, through every stage on real Redis with real models.

Capture replays each meeting as fast as it can; the transcriber, face and memory stages run
in burst mode after it. At the third meeting Sarah is recognised from another photo and the
recall card names her, her company and what the first conversation was about.
"""

import threading
import time
from pathlib import Path

import redis

from services.capture.demo import build
from services.capture.model import SileroVadModel
from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings
from services.face.handler import FaceHandler
from services.face.model import FacePackModel
from services.memory.handler import MemoryHandler
from services.memory.settings import EncounterSettings, MemorySettings
from services.scribe.handler import Scribe
from services.transcriber.handler import TranscriberHandler
from services.transcriber.model import WhisperSpeechModel
from services.transcriber.settings import WhisperSettings
from shared.consumer import Consumer
from shared.publisher import Publisher
from shared.schemas import (
    AudioSegmentMessage,
    EncounterMessage,
    FaceMessage,
    FrameMessage,
    RecallMessage,
    TranscriptMessage,
)
from shared.settings import ServiceSettings
from tests.memory.test_memory_service import scribe_loop


def test_demo_meetings_end_with_sarah_recognised(
    r: redis.Redis, settings: ServiceSettings, face_pack: FacePackModel, tmp_path: Path
) -> None:
    whisper = TranscriberHandler(WhisperSettings(), WhisperSpeechModel(WhisperSettings()))
    faces = FaceHandler(face_pack.settings, face_pack)
    memory_settings = MemorySettings(
        redis_url=settings.redis_url, consumer=settings.consumer, wearer_name="Alex",
        encounter=EncounterSettings(gap_s=3.0, tick_s=0.01),  # the meetings' pauses are 1.2 s
    )  # fmt: skip
    memory = MemoryHandler(r, memory_settings)
    vad = SileroVadModel()
    started = time.monotonic()
    for i, folder in enumerate(build(tmp_path), 1):
        capture = CaptureSettings(redis_url=settings.redis_url, session=f"demo-{i}")
        capture.frames = capture.frames.model_copy(update={"source": str(folder / "frames")})
        runner = CaptureRunner(capture, Publisher(r, capture, threading.Event()), vad)
        runner.handler.t0 -= 120  # a fast replay: as if the meeting had been recorded two minutes ago
        runner.replay(folder / "audio.wav")
        Consumer(r, settings, "transcriber", {AudioSegmentMessage: whisper}).run(burst=True)
        Consumer(r, settings, "face", {FrameMessage: faces}).run(burst=True)
        handlers = {FaceMessage: memory.on_face, TranscriptMessage: memory.on_transcript}
        Consumer(r, memory_settings, "memory", handlers, ticker=memory).run(burst=True)
        time.sleep(3.1)  # nothing arrives for longer than the gap: the next run's tick closes the meeting
        Consumer(r, memory_settings, "memory", handlers, ticker=memory).run(burst=True)
        scribe_loop(r, memory_settings, Scribe(r, memory_settings)).run(burst=True)
    elapsed = time.monotonic() - started
    print(f"three demo meetings through every stage in {elapsed:.1f} s")

    encounters = [EncounterMessage.from_fields(f) for _, f in r.xrange("encounters")]
    assert [e.session for e in encounters] == ["demo-1", "demo-2", "demo-3"]
    assert (
        encounters[0].summary == "Met Sarah Chen from Stripe at the climbing gym. Talked about rate limits."
    )
    assert encounters[0].person_id == encounters[2].person_id != encounters[1].person_id
    assert encounters[2].summary.startswith("Met Sarah Chen from Stripe again"), "the summary knows who"
    assert "someone new" not in encounters[1].summary
    cards = [RecallMessage.from_fields(f) for _, f in r.xrange("recalls")]
    sarah_again = [c for c in cards if c.recall_id.startswith("demo-3")]
    assert sarah_again and sarah_again[0].name == "Sarah Chen"
    assert sarah_again[0].summary.startswith("Sarah Chen from Stripe — last met")
    assert "at the climbing gym; talked about rate limits" in sarah_again[0].summary
