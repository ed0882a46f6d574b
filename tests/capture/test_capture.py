"""Capture on real speech (espeak-ng) with the real Silero VAD, publishing to a real redis-server."""

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from services.capture.ingest import build_ingest_app
from services.capture.model import SileroVadModel
from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings, FrameSettings, VadSettings
from services.capture.sources import chunked
from shared.publisher import Publisher
from shared.schemas import AudioSegmentMessage, FrameMessage, PartialSegmentMessage
from tests.face.conftest import photo
from tests.speech import RATE, SARAH, speech, voiced_span, write_wav

SILENCE_2S = np.zeros(2 * RATE, np.float32)


def replay(r: redis.Redis, settings: CaptureSettings, vad: SileroVadModel, source: Path) -> CaptureRunner:
    runner = CaptureRunner(settings, Publisher(r, settings, threading.Event()), vad)
    runner.replay(source)
    return runner


def segments(r: redis.Redis) -> list[AudioSegmentMessage]:
    return [AudioSegmentMessage.from_fields(f) for _, f in r.xrange("audio:segments")]


def test_one_sentence_gives_one_segment_covering_the_speech(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    audio = np.concatenate([SILENCE_2S[: RATE // 2], speech(SARAH, tmp_path), SILENCE_2S])
    runner = replay(r, capture_settings, vad, write_wav(tmp_path / "sarah.wav", audio))
    [seg] = segments(r)
    start, end = voiced_span(audio)
    assert seg.t_start - runner.handler.t0 <= start and seg.t_end - runner.handler.t0 >= end
    assert seg.sample_rate == RATE and len(seg.audio) == 2 * round((seg.t_end - seg.t_start) * RATE)
    assert seg.session == "test" and seg.segment_id == "test-a000001"


def test_two_sentences_two_seconds_apart_give_two_segments(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    one, two = speech("Hello, my name is Tom.", tmp_path), speech("I work at a bakery in town.", tmp_path)
    replay(r, capture_settings, vad, write_wav(tmp_path / "two.wav", np.concatenate([one, SILENCE_2S, two])))
    first, second = segments(r)
    assert first.t_end <= second.t_start
    assert second.t_start - first.t_end > 1.0


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_or_noise_gives_no_segment(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path, kind: str
) -> None:
    audio = np.zeros(10 * RATE, np.float32)
    if kind == "noise":
        audio = (np.random.default_rng(1).standard_normal(10 * RATE) * 0.1).astype(np.float32)
    runner = replay(r, capture_settings, vad, write_wav(tmp_path / f"{kind}.wav", audio))
    assert segments(r) == [] and runner.handler.n_segments == 0


def test_long_monologue_is_cut_at_the_max_length_with_overlap(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    text = (
        "I have been working on payments infrastructure for a long time, and the hardest part "
        "is always the same, the retries, the idempotency keys and the rate limits that every "
        "partner bank sets in a different way, "
    ) * 6
    audio = speech(text, tmp_path)
    assert len(audio) / RATE >= 60
    capture_settings.vad = VadSettings(max_segment_s=10, overlap_s=0.5, min_silence_ms=3000)
    replay(r, capture_settings, vad, write_wav(tmp_path / "long.wav", audio))
    segs = segments(r)
    lengths = [s.t_end - s.t_start for s in segs]
    assert len(segs) >= len(audio) / RATE / 10 - 1
    assert max(lengths) <= 10.0 + 2e-3, lengths
    overlaps = [a.t_end - b.t_start for a, b in itertools.pairwise(segs)]
    assert all(o == pytest.approx(0.5, abs=0.04) for o in overlaps[:-1]), overlaps


def test_unreadable_and_unsupported_files_are_dead_lettered_and_replay_goes_on(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    folder = tmp_path / "day"
    folder.mkdir()
    (folder / "a-garbage.wav").write_bytes(b"RIFF\x00\x00garbage" * 100)
    header = bytearray((write_wav(tmp_path / "x.wav", speech("hello", tmp_path))).read_bytes())
    header[20:22] = (0x3039).to_bytes(2, "little")  # a WAVE format tag no decoder knows
    (folder / "b-codec.wav").write_bytes(bytes(header))
    write_wav(folder / "c-good.wav", np.concatenate([speech(SARAH, tmp_path), SILENCE_2S]))
    replay(r, capture_settings, vad, folder)
    letters = {f[b"id"].decode(): f[b"error"].decode() for _, f in r.xrange("dlq")}
    assert set(letters) == {str(folder / "a-garbage.wav"), str(folder / "b-codec.wav")}
    assert all("cannot decode audio" in e for e in letters.values()), letters
    assert len(segments(r)) == 1


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_replayed_frames_are_forwarded_only_during_speech_and_rate_capped(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i in range(40):  # 10 s at 4 fps
        (frames_dir / f"{i:03d}.jpg").write_bytes(jpeg(photo("astronaut")))
    audio = np.concatenate([SILENCE_2S, SILENCE_2S, speech(SARAH, tmp_path), SILENCE_2S, SILENCE_2S])
    capture_settings.frames = FrameSettings(source=str(frames_dir), replay_fps=4, max_fps=1, margin_s=0.5)
    runner = replay(r, capture_settings, vad, write_wav(tmp_path / "s.wav", audio))
    [seg] = segments(r)
    frames = [FrameMessage.from_fields(f) for _, f in r.xrange("frames")]
    times = [f.t for f in frames]
    assert frames and all(seg.t_start - 0.5 <= t <= seg.t_end + 0.5 for t in times), (seg, times)
    assert all(b - a >= 1.0 - 1e-6 for a, b in itertools.pairwise(times)), "at most 1 fps"
    assert times[0] <= seg.t_start + 0.25, "the speech-start edge sends a frame at once"
    assert runner.handler.gate.dropped["silence"] > 10 and runner.handler.gate.dropped["rate"] > 0
    assert (frames[0].width, frames[0].height) == (512, 512)


def test_http_ingest_refuses_non_jpeg_and_oversized_bodies(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel
) -> None:
    runner = CaptureRunner(capture_settings, Publisher(r, capture_settings), vad)
    settings = FrameSettings(source="http", max_body_bytes=200_000)
    client = TestClient(build_ingest_app(runner.submit_frame, settings))
    good = jpeg(photo("astronaut"))
    png = cv2.imencode(".png", cv2.resize(photo("astronaut"), (64, 64)))[1].tobytes()
    assert client.post("/frames", content=png, headers={"content-type": "image/png"}).status_code == 415
    assert client.post("/frames", content=png, headers={"content-type": "image/jpeg"}).status_code == 415
    assert client.post("/frames", content=b"", headers={"content-type": "image/jpeg"}).status_code == 415
    big = client.post("/frames", content=b"\xff" * 300_000, headers={"content-type": "image/jpeg"})
    assert big.status_code == 413
    bomb = bytearray(good)
    sof = bomb.index(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    assert (
        client.post("/frames", content=bytes(bomb), headers={"content-type": "image/jpeg"}).status_code == 413
    )
    early = runner.handler.now() - 10  # long before speech: dropped, and too old to be sent at speech start
    quiet = client.post(f"/frames?t={early}", content=good, headers={"content-type": "image/jpeg"})
    assert quiet.status_code == 200 and quiet.json() == {"forwarded": False, "frame_id": None}
    runner.handler.gate.speech_started(runner.handler.now())
    sent = client.post("/frames", content=good, headers={"content-type": "image/jpeg"})
    assert sent.json() == {"forwarded": True, "frame_id": "test-f000001"}
    assert r.xlen("frames") == 1


def test_mic_without_a_device_gives_a_clear_error_naming_the_settings() -> None:
    from services.capture.settings import AudioSettings
    from services.capture.sources import SourceError, mic_chunks

    with pytest.raises(SourceError, match="CONVO_AUDIO__MIC_DEVICE") as info:
        next(mic_chunks(AudioSettings(mic_device=None)))
    assert "cannot open the microphone" in str(info.value)


def test_stdin_pcm_is_segmented_like_a_file(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    import io

    from services.capture.sources import stdin_chunks

    audio = np.concatenate([SILENCE_2S, speech(SARAH, tmp_path), SILENCE_2S])
    pcm = io.BytesIO((audio * 32767).astype("<i2").tobytes())
    runner = CaptureRunner(capture_settings, Publisher(r, capture_settings), vad)
    runner.listen(stdin_chunks(pcm))
    [seg] = segments(r)
    assert seg.t_end - seg.t_start == pytest.approx(voiced_span(audio)[1] - voiced_span(audio)[0], abs=1.0)


def test_video_file_replay_sends_frames_during_speech(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    video = tmp_path / "glasses.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (512, 512))
    for _ in range(5 * 8):  # 8 s at 5 fps
        writer.write(photo("astronaut"))
    writer.release()
    audio = np.concatenate([SILENCE_2S, speech(SARAH, tmp_path), SILENCE_2S])
    capture_settings.frames = FrameSettings(source=str(video), max_fps=1, margin_s=0.3)
    replay(r, capture_settings, vad, write_wav(tmp_path / "s.wav", audio))
    [seg] = segments(r)
    times = [FrameMessage.from_fields(f).t for _, f in r.xrange("frames")]
    assert len(times) >= 3 and all(seg.t_start - 0.3 <= t <= seg.t_end + 0.3 for t in times)


def test_frames_are_dropped_and_counted_while_the_face_stage_lags_but_speech_is_never_dropped(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    capture_settings.frames = FrameSettings(source="http", max_fps=10_000, max_backlog=3)
    capture_settings.caps = capture_settings.caps.model_copy(update={"audio_segments": 2})
    runner = CaptureRunner(capture_settings, Publisher(r, capture_settings), vad)
    runner.frames_backlog.every_s = runner.speech_backlog.every_s = 0  # read the lag on every frame
    r.xgroup_create("frames", "face", id="$", mkstream=True)
    r.xgroup_create("audio:segments", "transcriber", id="$", mkstream=True)
    client = TestClient(build_ingest_app(runner.submit_frame, FrameSettings(source="http")))
    runner.handler.gate.speaking = True  # frames during speech
    image = jpeg(photo("astronaut"))
    answers = [client.post(f"/frames?t={time.time()}", content=image, headers={"content-type": "image/jpeg"})
               for _ in range(10)]  # fmt: skip
    assert [a.json()["forwarded"] for a in answers] == [True] * 4 + [False] * 6, "three waiting, then no more"
    assert r.xlen("frames") == 4 and runner.handler.gate.dropped["backpressure"] == 6
    # Speech is published however far behind the transcriber is, and over the stream's cap.
    audio = np.concatenate([speech(SARAH, tmp_path), SILENCE_2S] * 4)
    for chunk in chunked(audio):
        runner.publish(runner.handler.audio(chunk))
    runner.publish(runner.handler.flush())
    assert len(segments(r)) == runner.handler.n_segments >= 3 > capture_settings.caps.audio_segments


def test_speech_in_progress_is_marked_until_its_segment_is_written(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    """While someone is still speaking, nothing of it is in a stream yet: the session's speaking
    mark tells memory so (it ends no conversation meanwhile). It goes once the segment is out."""
    from shared.streams import MemoryKeys

    audio = np.concatenate([SILENCE_2S, speech(SARAH, tmp_path), SILENCE_2S])
    start, end = voiced_span(audio)
    runner = CaptureRunner(capture_settings, Publisher(r, capture_settings), vad)
    key = MemoryKeys.speaking("test")
    midway: list[tuple[bytes | None, int, int]] = []

    def chunks() -> Iterator[np.ndarray]:
        fed = 0
        for chunk in chunked(audio):
            yield chunk  # what follows runs once the chunk is handled
            fed += len(chunk)
            if not midway and fed / RATE >= (start + end) / 2:
                midway.append((r.get(key), r.ttl(key), r.xlen("audio:segments")))

    runner.listen(chunks())
    [(mark, ttl, written)] = midway
    assert mark is not None and written == 0, "speech in progress is marked, and in no stream yet"
    assert float(mark) - runner.handler.t0 == pytest.approx(start, abs=0.6)
    assert 0 < ttl <= capture_settings.vad.max_segment_s + 10, "a capture that dies leaves no mark for long"
    [seg] = segments(r)
    assert r.get(key) is None, "the mark goes once the segment is written"
    assert seg.t_start == pytest.approx(float(mark), abs=0.6)


def test_a_fast_replay_of_a_recording_ends_now_not_in_the_future(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    """`python -m services.capture --audio meeting.wav` without --realtime plays in a fraction of
    the recording's length; its speech is stamped as if it had just been recorded, ending now
    (memory refuses times from the future)."""
    wav = write_wav(
        tmp_path / "meeting.wav", np.concatenate([SILENCE_2S, speech(SARAH, tmp_path), SILENCE_2S])
    )
    capture_settings.audio = capture_settings.audio.model_copy(update={"source": str(wav), "realtime": False})
    runner = CaptureRunner(capture_settings, Publisher(r, capture_settings), vad)
    runner.run()
    done = time.time()
    [seg] = segments(r)
    assert seg.t_end <= done, f"{seg.t_end - done:.1f} s in the future"
    assert done - seg.t_end < 4.0, "and it ends about when the recording's speech does, before now"


def test_speech_going_on_is_sent_as_partials_of_the_segment_it_becomes(
    r: redis.Redis, capture_settings: CaptureSettings, vad: SileroVadModel, tmp_path: Path
) -> None:
    """While someone speaks, the audio so far goes out every ``partial_every_s``, named after the
    segment it will be written as; the segment itself is unchanged. None goes out once a pause
    has lasted ``speech_pad_ms``: the segment may be cut any moment, and would wait for the
    partial's decode."""
    long = speech("I have been working on the payments service for years, mostly on rate limits.", tmp_path)
    short = speech("Nice.", tmp_path)
    audio = np.concatenate([SILENCE_2S[: RATE // 2], long, SILENCE_2S, short, SILENCE_2S])
    capture_settings.vad = VadSettings(partial_every_s=1.0)
    runner = replay(r, capture_settings, vad, write_wav(tmp_path / "long.wav", audio))
    first, _ = segments(r)
    partials = [PartialSegmentMessage.from_fields(f) for _, f in r.xrange("audio:partials")]
    assert {p.segment_id for p in partials} == {first.segment_id}, "the short one is over before a second"
    seconds = first.t_end - first.t_start  # speech, the pauses' pads, and partials until it is cut
    assert 3 <= seconds - 1 <= len(partials) <= seconds + 0.5, (len(partials), seconds)
    ends = [p.t_end - runner.handler.t0 for p in partials]
    assert all(b - a == pytest.approx(1.0, abs=0.04) for a, b in itertools.pairwise(ends)), ends
    assert all(p.t_start == first.t_start and p.t_end < first.t_end for p in partials)
    last = np.frombuffer(partials[-1].audio, "<i2")
    assert np.array_equal(last, np.frombuffer(first.audio, "<i2")[: len(last)]), "the same audio, so far"
    assert len({p.partial_id for p in partials}) == len(partials)

    r.flushdb()
    capture_settings.vad = VadSettings(partial_every_s=0.1)
    capture_settings.session = "often"
    runner = replay(r, capture_settings, vad, write_wav(tmp_path / "long.wav", audio))
    often = [PartialSegmentMessage.from_fields(f) for _, f in r.xrange("audio:partials")]
    ends = [p.t_end - runner.handler.t0 for p in often if p.segment_id == segments(r)[0].segment_id]
    spoken_until = 0.5 + voiced_span(long)[1]
    # the VAD hears the pause within about 0.1 s, and the segment is cut 0.5 s into it
    assert len(ends) > 10 and max(ends) < spoken_until + 0.3, "none late in the pause that ends it"

    r.flushdb()
    capture_settings.vad = VadSettings(partial_every_s=0)
    capture_settings.session = "off"
    replay(r, capture_settings, vad, write_wav(tmp_path / "long.wav", audio))
    assert len(segments(r)) == 2 and r.xlen("audio:partials") == 0, "0 turns them off"
