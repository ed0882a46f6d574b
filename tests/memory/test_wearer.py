"""The wearer apart from the other person, by voice: real recorded speech (two readers from
pocketsphinx-testdata), the real voice stage and memory on a real Redis."""

import time
from pathlib import Path

import numpy as np
import pytest
import redis
from typer.testing import CliRunner

from services.capture.demo import speak
from services.cli import app
from services.face.model import FacePackModel
from services.memory.handler import MemoryHandler
from services.memory.records import Person
from services.memory.settings import MemorySettings
from services.memory.view import HEARD_WITH, Views
from services.scribe.handler import Scribe
from services.voice.handler import VoiceHandler
from services.voice.model import VoiceEncoderModel
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage, FaceMessage, RecallMessage, TranscriptMessage, VoiceMessage
from shared.settings import ServiceSettings
from shared.streams import MemoryKeys
from tests.face.conftest import photo
from tests.memory.test_conversations import encounters, face
from tests.memory.test_identity import glimpse
from tests.memory.test_memory_service import faces_of, line, scribe_loop
from tests.speech import write_wav
from tests.voice.test_voice import segment

Readers = dict[str, list[tuple[np.ndarray, str]]]
MINE = ["Hi, I'm Jamie Moore from Acme.", "I should send her the paper tonight.", "See you soon then."]
THEIRS = ["I'm Sarah Chen from Stripe.", "I work on payments.", "Nice to meet you.", "Sure.", "Bye."]


def memory_loop(r: redis.Redis, settings: MemorySettings, handler: MemoryHandler) -> Consumer:
    handlers = {
        FaceMessage: handler.on_face,
        VoiceMessage: handler.on_voice,
        TranscriptMessage: handler.on_transcript,
    }
    return Consumer(r, settings, "memory", handlers, ticker=handler)


def memory_then_scribe(r: redis.Redis, settings: MemorySettings, handler: MemoryHandler) -> None:
    memory_loop(r, settings, handler).run(burst=True)
    scribe_loop(r, settings, Scribe(r, settings)).run(burst=True)


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
        memory_then_scribe(r, settings, handler)
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
        memory_then_scribe(r, memory_settings, handler)
        time.sleep(1.1)
    [encounter] = encounters(r)
    assert [x["speaker"] for x in encounter.lines] == [""]
    assert encounter.name == "Sarah Chen"


def converse(
    r: redis.Redis, settings: MemorySettings, voice_model: VoiceEncoderModel, session: str, t: float,
    said: list[tuple[np.ndarray, str]], faces: list[FaceMessage] = (),  # type: ignore[assignment]
    first: int = 1,
) -> MemoryHandler:  # fmt: skip
    """One conversation: the faces in view, then each line's audio and transcript, through the
    real voice stage and memory, until its encounter is written. ``first``: the number of its
    first segment (the session's earlier ones come before it)."""
    hear(r, settings, voice_model, session, t, said, faces, first)
    handler = MemoryHandler(r, settings)
    for _ in range(4):
        memory_then_scribe(r, settings, handler)
        time.sleep(1.1)
    return handler


def hear(
    r: redis.Redis, settings: MemorySettings, voice_model: VoiceEncoderModel, session: str, t: float,
    said: list[tuple[np.ndarray, str]], faces: list[FaceMessage], first: int,
) -> None:  # fmt: skip
    """The faces, then each line's audio and transcript, written; the real voice stage embeds the
    lines (memory has not handled any of it yet)."""
    r.sadd(MemoryKeys.SESSIONS, session)
    for f in faces:
        r.xadd("faces", f.to_fields())
    for i, (audio, text) in enumerate(said):
        seg = segment(audio, f"{session}-a{first + i}", session)
        r.xadd(
            "audio:segments",
            seg.model_copy(update={"t_start": t + 3 * i, "t_end": t + 3 * i + 2}).to_fields(),
        )
        r.xadd("transcripts", line(session, first + i, text, t + 3 * i).to_fields())
    stage = VoiceHandler(voice_model.settings, voice_model)
    Consumer(r, settings, "voice", {AudioSegmentMessage: stage}).run(burst=True)


def meet_sarah(
    r: redis.Redis, settings: MemorySettings, voice_model: VoiceEncoderModel, readers: Readers,
    embeddings: dict[str, np.ndarray], t: float,
) -> str:  # fmt: skip
    """Sarah (the card reader's voice, a face of t1) met once and introduced; her person id."""
    cards = readers["cards-reader"]
    said = [(cards[1][0], "Hi, I'm Sarah Chen from Stripe."), (cards[4][0], "I work on payments.")]
    converse(r, settings, voice_model, "met", t, said, [face("met", "met-f1", embeddings["t1-2"], t)])
    return next(e.person_id for e in encounters(r) if e.session == "met")


def meet_tom(
    r: redis.Redis, settings: MemorySettings, voice_model: VoiceEncoderModel, readers: Readers,
    embeddings: dict[str, np.ndarray], t: float,
) -> str:  # fmt: skip
    """Tom (the astronaut's face, an espeak voice) met once; the wearer greets him. His id."""
    said = [
        (readers["librivox-reader"][0][0], "Hi there."),
        (speak("en-us", "I'm Tom Berg."), "I'm Tom Berg."),
    ]
    converse(r, settings, voice_model, "tom", t, said, [face("tom", "tom-f1", embeddings["astronaut"], t)])
    return next(e.person_id for e in encounters(r) if e.session == "tom")


def cards_of(r: redis.Redis, session: str) -> list[RecallMessage]:
    return [
        c
        for _, f in r.xrange("recalls")
        for c in [RecallMessage.from_fields(f)]
        if c.recall_id.startswith(session)
    ]


def test_a_known_voice_names_a_speaker_out_of_frame_and_forget_removes_it(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Met once (face and voice); later heard with nobody in view: her card, "by voice". Her
    voice views are in the database until she is forgotten, then nowhere."""
    cards = readers["cards-reader"]
    t = time.time() - 600
    sarah = meet_sarah(r, memory_settings, voice_model, readers, embeddings, t)
    views = r.hvals(MemoryKeys.voices(sarah))
    assert len(views) == 2, "her lines became her voice views"
    assert not r.hlen(MemoryKeys.voiceprints("met")), "and left the session's keeping"

    handler = converse(r, memory_settings, voice_model, "later", t + 300, [(cards[2][0], "Over here!")])
    heard = cards_of(r, "later")
    assert heard and heard[0].person_id == sarah and heard[0].note == "by voice", heard
    assert heard[0].name == "Sarah Chen"

    handler.admin.forget(sarah)
    for key in r.scan_iter():
        kind = r.type(key)
        values = r.hvals(key) if kind == b"hash" else [r.get(key)] if kind == b"string" else []
        values += [f for _, e in r.xrange(key) for f in e.values()] if kind == b"stream" else []
        assert not any(v and any(view in v for view in views) for v in values), (
            f"her voice is still in {key!r}"
        )


def test_a_face_and_a_voice_that_disagree_make_no_wrong_card(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Sarah's voice is known; Tom is in view (known by his face only) while her voice speaks:
    Tom's card stays, no card of hers."""
    cards = readers["cards-reader"]
    t = time.time() - 900
    sarah = meet_sarah(r, memory_settings, voice_model, readers, embeddings, t)
    tom = meet_tom(r, memory_settings, voice_model, readers, embeddings, t + 100)
    assert tom != sarah
    t2 = t + 400
    converse(
        r, memory_settings, voice_model, "both", t2, [(cards[2][0], "Over here!"), (cards[3][0], "Yes.")],
        [face("both", f"both-f{i}", embeddings["astronaut"], t2 + i) for i in range(3)],
    )  # fmt: skip
    shown = cards_of(r, "both")
    assert shown and all(c.person_id == tom for c in shown), [(c.person_id, c.note) for c in shown]


def test_bad_voices_go_to_dlq_and_memory_goes_on(
    r: redis.Redis,
    memory_settings: MemorySettings,
    voice_model: VoiceEncoderModel,
    readers: Readers,
    enrolled: int,
) -> None:
    """A voice embedding of the wrong size, with NaN, not normed, or for an unknown session."""
    audio, _ = readers["cards-reader"][1]
    r.sadd(MemoryKeys.SESSIONS, "s")
    [good] = VoiceHandler(voice_model.settings, voice_model)(segment(audio, "s-a1"))
    good = good.model_copy(update={"t_start": time.time() - 5, "t_end": time.time() - 3})
    nan = np.frombuffer(good.embedding, "<f4").copy()
    nan[3] = np.nan
    bad = {
        "short": (good.embedding[:-4], "expected 256 float32"),
        "nan": (nan.tobytes(), "NaN"),
        "loud": ((np.frombuffer(good.embedding, "<f4") * 2).astype("<f4").tobytes(), "not normed"),
    }
    for name, (embedding, _) in bad.items():
        r.xadd("voices", good.model_copy(update={"segment_id": name, "embedding": embedding}).to_fields())
    r.xadd("voices", good.model_copy(update={"segment_id": "stray", "session": "nobody"}).to_fields())
    r.xadd("voices", good.to_fields())
    stats = memory_loop(r, memory_settings, MemoryHandler(r, memory_settings)).run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (1, len(bad) + 1)
    letters = {f[b"f.segment_id"].decode(): f[b"error"].decode() for _, f in r.xrange("dlq")}
    for name, (_, error) in bad.items():
        assert error in letters[name], letters[name]
    assert "unknown session" in letters["stray"]
    assert r.hget(MemoryKeys.speakers("s"), "s-a1"), "the good one was marked"


def test_in_a_group_the_face_whose_voice_speaks_is_the_one_talked_to(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """Tom fills the middle of the view, Sarah is small at its edge; Sarah's voice speaks: her
    card, and the conversation is hers."""
    cards = readers["cards-reader"]
    t = time.time() - 900
    sarah = meet_sarah(r, memory_settings, voice_model, readers, embeddings, t)
    tom = meet_tom(r, memory_settings, voice_model, readers, embeddings, t + 100)
    t2 = t + 400
    group = []
    for i in range(3):
        group += [
            face("group", f"group-f{i}", embeddings["astronaut"], t2 + i).model_copy(
                update={"bbox": [240, 160, 400, 320], "width": 640, "height": 480, "faces_in_frame": 2,
                        "face_id": f"group-f{i}:0"}
            ),
            face("group", f"group-f{i}", embeddings["t1-2"], t2 + i).model_copy(
                update={"bbox": [560, 40, 630, 110], "width": 640, "height": 480, "faces_in_frame": 2,
                        "face_id": f"group-f{i}:1"}
            ),
        ]  # fmt: skip
    converse(r, memory_settings, voice_model, "group", t2, [], group)
    assert [c.person_id for c in cards_of(r, "group")] == [tom], (
        "by faces alone, Tom in the middle is the one"
    )
    converse(r, memory_settings, voice_model, "group", t2 + 2, [(cards[2][0], "So, where were we?")])
    shown = cards_of(r, "group")
    assert shown[-1].person_id == sarah, [(c.person_id, c.note) for c in shown]
    assert [e.person_id for e in encounters(r) if e.session == "group"] == [sarah]


def test_merge_moves_voice_views_and_the_voice_then_names_the_kept_person(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """The wearer says Sarah and another person are one: her voice views move to the one kept,
    whom her voice then names."""
    t = time.time() - 900
    sarah = meet_sarah(r, memory_settings, voice_model, readers, embeddings, t)
    handler = MemoryHandler(r, memory_settings)
    keep = handler.store.identify(embeddings["t1-4"]).person_id
    assert keep and keep != sarah
    views = set(r.hvals(MemoryKeys.voices(sarah)))
    handler.admin.merge(keep, sarah)
    assert set(r.hvals(MemoryKeys.voices(keep))) == views and not r.exists(MemoryKeys.voices(sarah))
    assert r.smembers(MemoryKeys.VOICED) == {keep.encode()}
    audio, _ = readers["cards-reader"][2]
    assert handler.voices.match(voice_model.embed(audio)[0])[0] == keep


def test_only_the_one_voice_of_a_conversation_becomes_its_persons(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """A friend of Sarah's chimes in while only Sarah is in view. With a line each, whose voice is
    whose is not known: Sarah gets neither. With two lines of hers and one of the friend's, hers
    become her voice views: her voice later names her, the friend's does not."""
    cards = readers["cards-reader"]
    chime = "We play on the same team every weekend, rain or shine."
    friend = speak("en-gb", chime)
    t = time.time() - 900
    first = [(cards[1][0], "Hi, I'm Sarah Chen from Stripe."), (friend, chime)]
    converse(r, memory_settings, voice_model, "met", t, first, [face("met", "met-f1", embeddings["t1-2"], t)])
    sarah = next(e.person_id for e in encounters(r) if e.session == "met")
    assert r.hlen(MemoryKeys.voices(sarah)) == 0, "two voices, a line each: neither is hers"

    t2 = t + 100
    again = [(cards[3][0], "Good to see you again."), (friend, chime), (cards[4][0], "I work on payments.")]
    converse(
        r,
        memory_settings,
        voice_model,
        "again",
        t2,
        again,
        [face("again", "again-f1", embeddings["t1-2"], t2)],
    )
    assert [e.person_id for e in encounters(r) if e.session == "again"] == [sarah]
    assert r.hlen(MemoryKeys.voices(sarah)) == 2, "her two lines, not the friend's"

    converse(r, memory_settings, voice_model, "friend", t + 300, [(friend, chime)])
    assert not cards_of(r, "friend"), "the friend's voice is not Sarah's"
    converse(r, memory_settings, voice_model, "her", t + 400, [(cards[2][0], "Over here!")])
    assert [(c.person_id, c.note) for c in cards_of(r, "her")][:1] == [(sarah, "by voice")]


def test_a_known_voice_makes_no_card_beside_a_face_that_may_be_someone_else(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray], face_pack: FacePackModel,
) -> None:  # fmt: skip
    """Sarah's voice is known. Tom, known by his face, is across the room, too far off to be sure
    of, while her voice speaks: the face may be Tom's, so a face and a voice may disagree, and
    no card shows, neither hers "by voice" nor a stranger's."""
    cards = readers["cards-reader"]
    t = time.time() - 900
    sarah = meet_sarah(r, memory_settings, voice_model, readers, embeddings, t)
    tom = meet_tom(r, memory_settings, voice_model, readers, embeddings, t + 100)
    far = faces_of(face_pack, glimpse(photo("astronaut")), "far", "far-f1", t + 400)
    converse(r, memory_settings, voice_model, "far", t + 400, [(cards[2][0], "Over here!")], far)
    assert tom in set(Views(r).maybes("far", 0)), "the face far off scored borderline against Tom"
    assert not cards_of(r, "far"), [(c.person_id == sarah, c.note) for c in cards_of(r, "far")]


def two_strangers(
    session: str, t: float, edge: np.ndarray, front: np.ndarray, frames: int = 3
) -> list[FaceMessage]:  # fmt: skip
    """Frames of two faces: ``front`` large in the middle of the view, ``edge`` small at its edge."""
    boxes = [(front, [240, 160, 400, 320]), (edge, [560, 40, 630, 110])]
    return [
        face(session, f"{session}-g{i}", vector, t + i).model_copy(
            update={"bbox": box, "width": 640, "height": 480, "faces_in_frame": 2,
                    "face_id": f"{session}-g{i}:{k}"}
        )
        for i in range(frames)
        for k, (vector, box) in enumerate(boxes)
    ]  # fmt: skip


def person_of(r: redis.Redis, settings: MemorySettings, vector: np.ndarray) -> Person:
    """The person (or candidate) whose views hold this face."""
    repo = MemoryHandler(r, settings).store.repo
    return next(repo.get(p) for p in repo.person_ids() if (repo.views(p) @ vector).max() > 0.9)


def spoke_alone_then_joined(
    r: redis.Redis, settings: MemorySettings, voice_model: VoiceEncoderModel, readers: Readers,
    embeddings: dict[str, np.ndarray], session: str, words: str,
) -> tuple[Person, Person]:  # fmt: skip
    """A stranger (the card reader's voice) speaks while alone in view, small at its edge; then
    another stranger steps into the middle of the view, larger, and the first one says ``words``.
    Returns (the one who spoke, the one in front)."""
    cards = readers["cards-reader"]
    edge, front = embeddings["t1-0"], embeddings["t1-4"]
    t = time.time() - 900
    alone = [
        face(session, f"{session}-f{i}", edge, t + i).model_copy(
            update={"bbox": [560, 40, 630, 110], "width": 640, "height": 480}
        )
        for i in range(2)
    ]  # fmt: skip
    # memory alone, no scribe: his voice is the session's, not yet a person's voice view
    hear(r, settings, voice_model, session, t, [(cards[4][0], "Were you at the game on Sunday?")], alone, 1)
    memory_loop(r, settings, MemoryHandler(r, settings)).run(burst=True)
    group = two_strangers(session, t + 4, edge, front)
    converse(r, settings, voice_model, session, t + 5, [(cards[1][0], words)], group, first=2)
    return person_of(r, settings, edge), person_of(r, settings, front)


def test_a_stranger_introducing_himself_in_a_group_is_the_face_his_voice_was_heard_with(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """He spoke while alone in view; then a teammate stands in front of him. "I'm Chris Doyle",
    in his voice, names him, not the larger face in the middle (which, by faces alone, is the
    one talking to the wearer)."""
    speaker, front = spoke_alone_then_joined(
        r, memory_settings, voice_model, readers, embeddings, "team", "I'm Chris Doyle, by the way."
    )
    assert (speaker.name, front.name) == ("Chris Doyle", "")
    assert [e.person_id for e in encounters(r) if e.session == "team"][-1] == speaker.id


def test_a_stranger_introducing_another_names_the_face_beside_his_own(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """The same two, but he introduces the one in front: "This is my teammate Sam Reed" names
    the face in front, not his own, though his is the smaller one (by faces alone, the one in
    front would be taken for the speaker, and the name given to him)."""
    speaker, front = spoke_alone_then_joined(
        r, memory_settings, voice_model, readers, embeddings, "intro", "This is my teammate Sam Reed."
    )
    assert (speaker.name, front.name) == ("", "Sam Reed")


def test_forget_removes_the_voices_heard_with_a_face(
    r: redis.Redis, memory_settings: MemorySettings, voice_model: VoiceEncoderModel,
    readers: Readers, enrolled: int, embeddings: dict[str, np.ndarray],
) -> None:  # fmt: skip
    """A voice heard while a face was alone in view is kept with that face for the session, and
    goes when the person does."""
    speaker, _ = spoke_alone_then_joined(
        r, memory_settings, voice_model, readers, embeddings, "gone", "I'm Chris Doyle, by the way."
    )
    key = MemoryKeys.heard_with("gone")
    assert any(f.startswith(speaker.id.encode() + b" ") for f in r.hkeys(key)), r.hkeys(key)
    MemoryHandler(r, memory_settings).admin.forget(speaker.id)
    assert not any(f.startswith(speaker.id.encode() + b" ") for f in r.hkeys(key)), r.hkeys(key)


def test_a_face_keeps_a_few_voices_however_long_the_session(
    r: redis.Redis, voice_model: VoiceEncoderModel, readers: Readers
) -> None:
    """A face alone in view for an hour of talk keeps :data:`HEARD_WITH` voices, not one per line,
    and they still tell its voice (a line not among them) from the wearer's."""
    stage = VoiceHandler(voice_model.settings, voice_model)
    theirs = [
        stage(segment(a, f"s-{i}", "long"))[0].embedding
        for i, (a, _) in enumerate(readers["cards-reader"][:-1])
    ]
    views = Views(r)
    for i in range(60):
        views.heard_with("long", "p-1", f"long-a{i}", theirs[i % len(theirs)])
    assert r.hlen(MemoryKeys.heard_with("long")) == HEARD_WITH
    reader, wearer = (
        stage(segment(readers[w][-1][0], "probe", "long"))[0].vector()
        for w in ("cards-reader", "librivox-reader")
    )
    assert views.whose_voice("long", reader, ["p-1", "p-2"], 0.74, 0.05) == "p-1"
    assert views.whose_voice("long", wearer, ["p-1", "p-2"], 0.74, 0.05) is None
