"""Live words from partial audio: real tiny.en, real espeak-ng speech, a real redis-server."""

import itertools
import json
import time
from pathlib import Path

import numpy as np
import redis

from services.transcriber.handler import TranscriberHandler
from services.transcriber.live import LiveWords, agree
from services.transcriber.model import WhisperSpeechModel
from shared.consumer import Consumer
from shared.schemas import (
    AudioSegmentMessage,
    BadMessageError,
    PartialSegmentMessage,
    PartialTranscriptMessage,
    TranscriptMessage,
)
from shared.settings import ServiceSettings
from shared.streams import TranscriberKeys
from tests.speech import RATE, speech
from tests.transcriber.test_transcriber import segment

LONG = "I have been working on the payments service for years, mostly on rate limits and retries."


def partials(audio: np.ndarray, every_s: float = 1.5, n: int = 1) -> list[PartialSegmentMessage]:
    """What capture sends while ``audio`` is being spoken: the audio so far, every ``every_s``,
    stamped as if the last of it was heard just now."""
    out = []
    for i, end in enumerate(range(int(every_s * RATE), len(audio), int(every_s * RATE)), 1):
        heard = segment(audio[:end], n).model_copy(
            update={"t_end": time.time(), "t_start": time.time() - end / RATE}
        )
        out.append(
            PartialSegmentMessage(**heard.model_dump(exclude={"v"}), partial_id=f"{heard.segment_id}-p{i}")
        )
    return out


def words(text: str) -> list[str]:
    return [w.strip(".,?!").lower() for w in text.split()]


def test_a_word_is_stable_once_two_decodes_agree_and_never_changes_after() -> None:
    assert agree([], [], ["I", "have", "been"]) == [], "one decode is not enough"
    assert agree([], ["I", "have", "been"], ["I", "have", "bean", "working"]) == ["I", "have"]
    assert agree(["I", "have"], ["I", "have", "bean", "working"], ["I", "half", "been"]) == ["I", "have"]
    grown = agree(["I", "have"], ["I", "have", "been"], ["I", "have", "been", "working"])
    assert grown == ["I", "have", "been"]
    assert agree([], ["Hi,", "Tom."], ["hi", "Tom"]) == ["hi", "Tom"], "case and commas aside"


def test_live_words_grow_toward_the_transcript_and_end_with_it(
    r: redis.Redis, settings: ServiceSettings, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    audio = speech(LONG, tmp_path)
    live = LiveWords(whisper.settings, whisper, r)
    said = [out for p in partials(audio) for out in live(p)]
    assert len(said) >= 3
    stable = [words(s.stable) for s in said]
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(stable)), "stable words never change"
    assert len(stable[-1]) >= 4, stable
    right = sum(a == b for a, b in zip(stable[-1], words(LONG), strict=False))
    assert right >= len(stable[-1]) - 1, (stable[-1], "they are what was said, but for a word cut off")
    assert any(s.pending for s in said), "the newest words wait for a second decode"

    r.xadd("audio:segments", segment(audio, 1).to_fields())
    finals = TranscriberHandler(whisper.settings, whisper)
    assert Consumer(r, settings, "transcriber", {AudioSegmentMessage: finals}).run(burst=True).processed == 1
    assert live(partials(audio)[-1]) == [], "a partial after its segment's transcript is dropped"
    old = partials(audio, n=2)[0].model_copy(update={"t_start": time.time() - 12, "t_end": time.time() - 10})
    assert live(old) == [], "so is a stale one"


def test_only_the_newest_partial_of_an_utterance_is_decoded(
    r: redis.Redis, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    waiting = partials(speech(LONG, tmp_path))[:3]
    results = LiveWords(whisper.settings, whisper, r).handle_batch(waiting)
    assert [len(r) for r in results] == [0, 0, 1]  # type: ignore[arg-type]
    broken = waiting[0].model_copy(update={"audio": b"\x01"})
    [error] = LiveWords(whisper.settings, whisper, r).handle_batch([broken])
    assert isinstance(error, BadMessageError) and "whole s16le" in str(error)


def test_partials_are_written_after_the_segments_and_never_as_transcripts(
    r: redis.Redis, settings: ServiceSettings, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    audio = speech(LONG, tmp_path)
    for p in partials(audio):
        r.xadd("audio:partials", p.to_fields())
    r.xadd("audio:partials", partials(audio, n=9)[0].model_copy(update={"audio": b""}).to_fields())
    r.xadd("audio:segments", segment(speech("Good morning.", tmp_path), 0).to_fields())
    finals = TranscriberHandler(whisper.settings, whisper)
    live = LiveWords(whisper.settings, whisper, r)
    stats = Consumer(
        r, settings, "transcriber", {AudioSegmentMessage: finals, PartialSegmentMessage: live}
    ).run(burst=True)
    assert stats.dead_lettered == 1 and b"audio is empty" in r.xrange("dlq")[0][1][b"error"]
    [(final_id, fields)] = r.xrange("transcripts")
    assert TranscriptMessage.from_fields(fields).segment_id == "seg-0", "partials are never transcripts"
    written = r.xrange("transcripts:partial")
    assert written and all(PartialTranscriptMessage.from_fields(f).segment_id == "seg-1" for _, f in written)
    assert final_id < written[0][0], "the segment was written first"


def test_two_replicas_share_an_utterances_agreement(
    r: redis.Redis, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    """Partials of one utterance go to whichever replica reads them first: the second, at another
    replica, still agrees with the first, and a replica's late decode of an older partial is
    not written over a newer one's (its stable words would go back)."""
    audio = speech(LONG, tmp_path)
    a, b = LiveWords(whisper.settings, whisper, r), LiveWords(whisper.settings, whisper, r)
    said: list[PartialTranscriptMessage] = []
    heard = partials(audio)
    for p, live in zip(heard, itertools.cycle([a, b]), strict=False):
        said += live(p.model_copy(update={"t_end": time.time()}))
    stable = [words(s.stable) for s in said]
    assert len(said) == len(heard) >= 3 and stable[1], f"the second decode agrees with the first: {stable}"
    assert all(x == y[: len(x)] for x, y in itertools.pairwise(stable)), stable
    early, late = partials(audio, n=2)[:2]
    now = time.time()
    assert b(late.model_copy(update={"t_end": now}))
    assert a(early.model_copy(update={"t_end": now - 0.5})) == [], "older than what is kept: dropped"


def test_an_unreadable_live_state_starts_the_utterance_over(
    r: redis.Redis, whisper: WhisperSpeechModel, tmp_path: Path
) -> None:
    """A state key that is not what the transcriber writes (another writer, a bad restore): the
    partial is still decoded, its words start over, and a readable state replaces the bad one."""
    first = partials(speech(LONG, tmp_path))[0]
    key = TranscriberKeys.live(first.segment_id)
    for junk in (b"\xff not json", b'"a string"', b"[1, 2]", b'{"t": "x", "words": 3}'):
        r.set(key, junk)
        [out] = LiveWords(whisper.settings, whisper, r)(first.model_copy(update={"t_end": time.time()}))
        assert out.pending and not out.stable, (junk, out)
        assert json.loads(r.get(key))["words"] == out.pending.split(), junk


def test_live_words_are_one_greedy_decode_at_one_temperature(whisper: WhisperSpeechModel) -> None:
    """A second of an unsure greeting: a segment's decode falls back through the temperatures
    (seconds on a CPU), live words may not. The hotwords still bring the name through."""
    from services.capture.demo import speak

    greeting = speak("en-us+m3", "Sarah! Over here, good to see you again.")
    start = int(np.flatnonzero(np.abs(greeting) > 0.02)[0])
    second = greeting[start : start + RATE]
    decodes: list[tuple[int, list[float]]] = []
    transcribe = whisper.model.transcribe

    def counted(audio: np.ndarray, **options: object) -> tuple[object, object]:
        segments, info = transcribe(audio, **options)
        parts = list(segments)
        decodes.append((options["beam_size"], [p.temperature for p in parts]))  # type: ignore[misc]
        return iter(parts), info

    whisper.model.transcribe = counted  # type: ignore[method-assign]
    try:
        final = whisper.predict(second, "Sarah, Chen, Stripe")
        assert any(t > 0 for _, temps in decodes for t in temps), f"the segment's decode fell back: {decodes}"
        decodes.clear()
        live = whisper.quick(second, "Sarah, Chen, Stripe")
    finally:
        whisper.model.transcribe = transcribe  # type: ignore[method-assign]
    assert decodes == [(1, [0.0] * len(decodes[0][1]))], decodes
    assert "Sarah" in live.text, (live.text, final.text)
