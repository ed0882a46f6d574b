"""The transcriber with the real tiny.en weights, on real espeak-ng speech and a real redis-server."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import redis

from services.transcriber.handler import TranscriberHandler
from services.transcriber.model import WhisperSpeechModel, echoes
from services.transcriber.settings import WhisperSettings
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, TranscriptMessage
from shared.settings import ServiceSettings
from tests.speech import RATE, SARAH, speech

REPO = Path(__file__).parents[2]


def segment(audio: np.ndarray, i: int | str = 1, rate: int = RATE) -> AudioSegmentMessage:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return AudioSegmentMessage(
        segment_id=f"seg-{i}",
        session="s",
        t_start=100.0,
        t_end=100.0 + len(audio) / RATE,
        sample_rate=rate,
        audio=pcm,
    )


def test_transcribes_the_introduction(whisper: WhisperSpeechModel, tmp_path: Path) -> None:
    [out] = TranscriberHandler(whisper.settings, whisper)(segment(speech(SARAH, tmp_path)))
    assert "Sarah" in out.text and "Stripe" in out.text
    assert out.language == "en" and out.model == "tiny.en" and 0.3 < out.confidence <= 1.0
    assert (out.segment_id, out.t_start) == ("seg-1", 100.0)


def batched_twin(whisper: WhisperSpeechModel) -> WhisperSpeechModel:
    """The same loaded weights, forced onto the batched pipeline (what a GPU replica uses)."""
    batched = WhisperSpeechModel(WhisperSettings(batched=True))
    batched.model, batched.batched, batched.name = whisper.model, whisper.batched, whisper.name
    return batched


def test_batched_pipeline_keeps_each_segment_apart(whisper: WhisperSpeechModel, tmp_path: Path) -> None:
    clips = [
        speech(SARAH, tmp_path), speech("Nice to see you again.", tmp_path), speech("Good morning.", tmp_path)
    ]  # fmt: skip
    together = [t.text.lower() for t in batched_twin(whisper).predict_batch(clips)]
    loop = [t.text.lower() for t in whisper.predict_batch(clips)]
    for words, texts in [(("stripe", "gym"), (together[0], loop[0])), (("again",), (together[1], loop[1]))]:
        assert all(w in t for w in words for t in texts), (together, loop)
    assert "morning" in together[2] and "stripe" not in together[1] + together[2]


def test_silence_hallucination_is_dropped_and_counted(whisper: WhisperSpeechModel) -> None:
    batched = batched_twin(whisper)
    handler = TranscriberHandler(batched.settings, batched)
    quiet = (np.random.default_rng(0).standard_normal(RATE * 2) * 1e-4).astype(np.float32)
    results = handler.handle_batch([segment(quiet, 1), segment(quiet, 2)])
    assert results == [[], []]
    assert sum(handler.dropped.values()) == 2, handler.dropped


def test_bad_segments_go_to_dlq_and_good_ones_still_flow(
    r: redis.Redis, settings: ServiceSettings, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    good = segment(speech("Good morning.", tmp_path), "good")
    changes = {
        "empty": ({"audio": b""}, "audio is empty"),
        "rate": ({"sample_rate": 44100}, "expected 16000 Hz"),
        "truncated": ({"audio": good.audio[:-1]}, "whole s16le"),
        "long": ({"audio": bytes(RATE * 31 * 2)}, "over the 30.0 s limit"),
        "backwards": ({"t_end": 99.0}, "is before t_start"),
    }
    bad = {
        name: (good.model_copy(update={"segment_id": name, **c}), err) for name, (c, err) in changes.items()
    }
    r.xadd("audio:segments", good.to_fields())
    for msg, _ in bad.values():
        r.xadd("audio:segments", msg.to_fields())
    stats = Consumer(
        r, settings, "transcriber", {AudioSegmentMessage: TranscriberHandler(whisper.settings, whisper)}
    ).run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (1, len(bad))
    letters = {f[b"f.segment_id"].decode(): f[b"error"].decode() for _, f in r.xrange("dlq")}
    for name, (_, error) in bad.items():
        assert error in letters[name]
    [(_, fields)] = r.xrange("transcripts")
    assert "morning" in TranscriptMessage.from_fields(fields).text.lower()


def test_two_replicas_transcribe_every_segment_exactly_once(
    r: redis.Redis, settings: ServiceSettings, tmp_path: Path
) -> None:
    sentences = [
        "Good morning.",
        "How are you?",
        "See you tomorrow.",
        "Thanks a lot.",
        "The coffee is great.",
    ] * 2
    for i, text in enumerate(sentences):
        r.xadd("audio:segments", segment(speech(text, tmp_path), i).to_fields())
    env = {**os.environ, "CONVO_REDIS_URL": settings.redis_url, "CONVO_CONSUMER__BATCH_SIZE": "1"}
    replicas = [
        subprocess.Popen(
            [sys.executable, "-m", "services.transcriber", "--burst"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=240)[0] for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0], logs
    ids = [TranscriptMessage.from_fields(f).segment_id for _, f in r.xrange("transcripts")]
    assert sorted(ids) == sorted(f"seg-{i}" for i in range(len(sentences)))
    consumers = r.xinfo_consumers("audio:segments", "transcriber")
    assert len(consumers) == 2 and r.xpending("audio:segments", "transcriber")["pending"] == 0
    assert sum("outcome=ok" in line for log in logs for line in log.splitlines()) == len(sentences)


def test_hotwords_help_a_name_through_and_do_not_derail_the_rest(whisper: WhisperSpeechModel) -> None:
    """The people in view are given to Whisper as hotwords. They must help a name and must not
    turn another line into something else, or into the hotwords themselves."""
    from services.capture.demo import WEARER, speak

    dana = speak("en-gb+f3", "Hi, I'm Dana Reyes from Acme.")
    assert "Dana Reyes" in whisper.predict(dana, "Dana Reyes Acme").text
    assert "Reyes" not in whisper.predict(dana).text, "without them the name is lost"
    gym = speak(WEARER, "Is this your first time at the climbing gym?")
    assert "climbing gym" not in whisper._decode(gym, "Sarah Chen Stripe").text, "a decode with them derails"
    assert "climbing gym" in whisper.predict(gym, "Sarah Chen Stripe").text
    priya = speak("en-gb+f4", "Priya, nice to see you at Anthropic.")
    assert echoes(whisper._decode(priya, "Priya Natarajan Anthropic").text, "Priya Natarajan Anthropic")
    assert not echoes(whisper.predict(priya, "Priya Natarajan Anthropic").text, "Priya Natarajan Anthropic")


def test_hotwords_are_given_as_a_list_of_terms(whisper: WhisperSpeechModel) -> None:
    """The handler passes the context as comma-separated terms, and with them the company in a
    greeting is heard. (Run together as "Grace Kim Nvidia", tiny.en lost it on some CPUs and not
    on others, so that contrast is not asserted: beam search differs with the SIMD the CPU has.)"""
    from services.capture.demo import speak

    settings = WhisperSettings(vocabulary=["Nvidia"])
    handler = TranscriberHandler(settings, whisper)
    assert handler.hotwords("no-context") == "Nvidia"
    settings.vocabulary = ["Grace", "Kim", "Nvidia", "Grace"]
    assert handler.hotwords("no-context") == "Grace, Kim, Nvidia"
    grace = speak("en-us+f2", "Hi again Grace, how is Nvidia treating you?")
    assert "Nvidia" in whisper.predict(grace, handler.hotwords("no-context")).text


def test_an_echo_is_every_hotword_in_order() -> None:
    assert echoes("Dana Rains Acme. Thanks, good to see you.", "Dana Rains Acme")
    assert not echoes("Dana, good to see you at Acme.", "Dana Rains Acme")
    assert not echoes("Tom Baker", "Tom Baker"), "two words could be said as they are"
