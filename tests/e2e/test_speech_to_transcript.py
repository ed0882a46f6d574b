"""Capture replays real speech into Redis; the transcriber turns it into text."""

import threading
from pathlib import Path

import numpy as np
import redis

from services.capture.model import SileroVadModel
from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings
from services.transcriber.handler import TranscriberHandler
from services.transcriber.model import WhisperSpeechModel
from services.transcriber.settings import WhisperSettings
from shared.consumer import Consumer
from shared.publisher import Publisher
from shared.schemas import AudioSegmentMessage, TranscriptMessage
from shared.settings import ServiceSettings
from tests.speech import RATE, SARAH, speech, voiced_span, write_wav


def test_introduction_is_replayed_segmented_and_transcribed(
    r: redis.Redis, settings: ServiceSettings, tmp_path: Path
) -> None:
    silence = np.zeros(RATE, np.float32)
    audio = np.concatenate([silence, speech(SARAH, tmp_path), silence])
    capture = CaptureSettings(redis_url=settings.redis_url, session="meet-1")
    runner = CaptureRunner(capture, Publisher(r, capture, threading.Event()), SileroVadModel())
    runner.replay(write_wav(tmp_path / "intro.wav", audio))

    handler = TranscriberHandler(WhisperSettings(), WhisperSpeechModel(WhisperSettings()))
    stats = Consumer(r, settings, "transcriber", {AudioSegmentMessage: handler}).run(burst=True)

    [(_, fields)] = r.xrange("transcripts")
    transcript = TranscriptMessage.from_fields(fields)
    assert stats.processed == 1
    assert "Sarah" in transcript.text and "Stripe" in transcript.text
    start, end = voiced_span(audio)
    t0 = runner.handler.t0
    assert transcript.t_start <= t0 + start and transcript.t_end >= t0 + end
    assert transcript.session == "meet-1" and transcript.segment_id == "meet-1-a000001"
