"""The wearer apart from the other person, by voice: real recorded speech (two readers from
pocketsphinx-testdata), the real voice stage and memory on a real Redis."""

import time
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from services.memory.handler import MemoryHandler
from services.memory.settings import MemorySettings
from services.voice.handler import VoiceHandler
from services.voice.model import VoiceEncoderModel
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, FaceMessage, TranscriptMessage, VoiceMessage
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys
from tests.memory.test_conversations import encounters, face
from tests.memory.test_memory_service import line
from tests.speech import write_wav
from tests.voice.test_voice import segment

Readers = dict[str, list[tuple[np.ndarray, str]]]
MINE = ["Hi, I'm Jamie Moore from Acme.", "I should send her the paper tonight.", "See you soon then."]
THEIRS = ["I'm Sarah Chen from Stripe.", "I work on payments.", "Nice to meet you.", "Sure.", "Bye."]


def memory_loop(r: redis.Redis, settings: MemorySettings, handler: MemoryHandler) -> Consumer:
    handlers = {
        FaceMessage: handler.on_face,
        TranscriptMessage: handler.on_transcript,
        VoiceMessage: handler.on_voice,
    }
    return Consumer(r, settings, "memory", handlers, ticker=handler)


@pytest.fixture
def enrolled(
    r: redis.Redis,
    settings: ServiceSettings,
    readers: Readers,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> int:
    """`convo wearer enroll` with two recordings of the LibriVox reader (the wearer)."""
    monkeypatch.setenv("CONVO_REDIS_URL", settings.redis_url)
    files = [
        write_wav(tmp_path / f"me-{i}.wav", audio)
        for i, (audio, _) in enumerate(readers["librivox-reader"][:2])
    ]
    result = CliRunner().invoke(app, ["wearer", "enroll", *(a for f in files for a in ("--audio", str(f)))])
    assert result.exit_code == 0, result.output
    return int(r.hlen(MemoryKeys.WEARER_VOICE))


def test_an_enrolled_wearers_lines_are_marked_me(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """The wearer's voice marks their lines; the other person's facts come only from theirs, and the
    wearer's own intention is an open thread. Without the voice, the wearer's name would be
    taken for hers (the rules extractor reads "Jamie Moore" as the last name said)."""
    assert enrolled == 2
    settings = memory_settings.model_copy(update={"wearer_name": None})  # the voice alone tells them apart
    mine = [audio for audio, _ in readers["librivox-reader"][2:]]
    theirs = [audio for audio, _ in readers["cards-reader"]]
    order = ["them", "me", "them", "me", "them", "them", "me", "them"]
    t = time.time() - 60
    r.sadd(MemoryKeys.SESSIONS, "s")
    r.xadd("faces", face("s", "f1", embeddings["t1-2"], t).to_fields())
    said = {"me": iter(zip(mine, MINE, strict=True)), "them": iter(zip(theirs, THEIRS, strict=True))}
    for i, who in enumerate(order):
        audio, text = next(said[who])
        seg = segment(audio, f"s-a{i + 1}").model_copy(update={"t_start": t + 3 * i, "t_end": t + 3 * i + 2})
        r.xadd("audio:segments", seg.to_fields())
        r.xadd("transcripts", line("s", i + 1, text, t + 3 * i).to_fields())
    voices = Consumer(
        r, settings, "voice", {AudioSegmentMessage: VoiceHandler(voice_model.settings, voice_model)}
    )
    assert voices.run(burst=True).processed == len(order)
    handler = MemoryHandler(r, settings)
    for _ in range(4):
        memory_loop(r, settings, handler).run(burst=True)
        time.sleep(1.1)
    [encounter] = encounters(r)
    assert [x["speaker"] for x in encounter.lines] == order
    assert [x["text"] for x in encounter.lines if x["speaker"] == "me"] == MINE
    assert (encounter.name, encounter.company) == ("Sarah Chen", "Stripe")
    assert "I should send her the paper tonight" in encounter.open_threads
    assert "Jamie" not in " ".join(f["text"] for f in encounter.facts)


def test_without_an_enrolled_voice_no_line_is_marked(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel, readers: Readers,
    embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    t = time.time() - 60
    r.sadd(MemoryKeys.SESSIONS, "s")
    r.xadd("faces", face("s", "f1", embeddings["t1-2"], t).to_fields())
    audio, _ = readers["cards-reader"][0]
    r.xadd(
        "audio:segments", segment(audio, "s-a1").model_copy(update={"t_start": t, "t_end": t + 2}).to_fields()
    )
    r.xadd("transcripts", line("s", 1, THEIRS[0], t).to_fields())
    Consumer(
        r, memory_settings, "voice", {AudioSegmentMessage: VoiceHandler(voice_model.settings, voice_model)}
    ).run(burst=True)
    handler = MemoryHandler(r, memory_settings)
    for _ in range(4):
        memory_loop(r, memory_settings, handler).run(burst=True)
        time.sleep(1.1)
    [encounter] = encounters(r)
    assert [x["speaker"] for x in encounter.lines] == [""]
    assert encounter.name == "Sarah Chen"
