"""``convo eval SCENES_DIR``: the identity scorecard, on scenes replayed through the real stages.

A scene is a YAML file (the format is in docs/ARCHITECTURE.md, "Evaluation scenes"): lines
spoken (an espeak-ng voice and text, or a WAV with its reference text), frames (packaged
photos, a person cut out of a group photo, side by side, mirrored) and what should come
out. Scenes play in file-name order, each a capture session replayed through capture, the
transcriber, the face stage and memory (their real handlers and the shared loop) on a
private redis-server, so the wearer's own memory is never touched. Later scenes refer to
earlier people by label.
"""

import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import redis
import yaml
from pydantic import BaseModel, Field

from services.capture.demo import RATE, speak
from services.capture.model import SileroVadModel
from services.capture.runner import CaptureRunner
from services.capture.settings import CaptureSettings
from services.face.handler import FaceHandler
from services.face.model import FaceDetectorModel, FacePackModel, packaged_model_dir
from services.face.settings import FaceModelSettings
from services.memory.grounding import said, words
from services.memory.handler import MemoryHandler
from services.memory.settings import EncounterSettings, MemorySettings
from services.memory.wearer import ME, THEM
from services.pagewatch import PageWatch, Shown
from services.scribe.handler import Scribe
from services.transcriber.context import SessionContext
from services.transcriber.handler import TranscriberHandler
from services.transcriber.live import LiveWords
from services.transcriber.model import WhisperSpeechModel
from services.transcriber.settings import WhisperSettings
from services.voice.handler import VoiceHandler
from services.voice.settings import VoiceModelSettings
from shared.consumer import Consumer
from shared.images import encode_jpeg
from shared.publisher import Publisher
from shared.redis_server import RedisServer
from shared.schemas import (
    AudioSegmentMessage,
    ConversationMessage,
    EncounterMessage,
    FrameMessage,
    PartialSegmentMessage,
    RecallMessage,
    StreamMessage,
    TranscriptMessage,
)
from shared.settings import ConsumerSettings, ServiceSettings

WEARER = "Alex"
"""The wearer's name in the scenes."""
GAP_S = 3.0
"""The pause that ends a scene's conversation (scenes are seconds long, not hours)."""
DAYS_APART = 3
"""Each scene is a capture session this many days after the last."""


class Line(BaseModel):
    text: str
    voice: str = "en-us"
    wav: str | None = None
    """A recording instead of espeak; ``text`` is then its reference transcript."""
    wearer: bool = False


class Shot(BaseModel):
    image: str | list[str]
    """A packaged photo (astronaut, t1, players, gdp) or a path; several are put side by side."""
    face: int | None = None
    """Cut out this face of the photo (0 is the leftmost), enlarged: another photo of that person."""
    only: list[int] | None = None
    """Keep only these faces of the photo (0 is the leftmost); the others are painted over."""
    flip: bool = False
    pixels: int | None = Field(None, ge=16)
    """Seen far off: the picture shrunk to this many pixels across and blown up again."""


class Expect(BaseModel):
    person: str | None = None
    """Label of who the conversation is with (the same label in later scenes is the same person)."""
    card: str | None = None
    """Label of the person whose card should be on screen while in view."""
    not_card: list[str] = []
    """Labels whose card must not show."""
    name: str | None = None
    company: str | None = None
    facts: list[str] = []
    crowd: bool = False
    """A crowd scene: count the persons it adds (the goal is at most one)."""
    out_of_frame: bool = False
    """The ``card`` person is heard, never seen: their time to card counts from the end of the
    first line that is not the wearer's, as a figure of its own (not a face's time to card)."""


class Scene(BaseModel):
    name: str = ""
    enroll: list[str] = []
    """Recordings of the wearer's own voice, enrolled before the scene plays (``convo wearer enroll``)."""
    lines: list[Line]
    frames: list[Shot]
    fps: float = Field(2.0, gt=0)
    expect: Expect = Expect()


@dataclass
class Score:
    """One scene's outcome."""

    scene: str
    identity: float | None = None
    attribution: float | None = None
    names: tuple[int, int, int] = (0, 0, 0)
    """(expected and right, expected, stored) for names; the same for companies below."""
    companies: tuple[int, int, int] = (0, 0, 0)
    facts: tuple[int, int] = (0, 0)
    words: tuple[int, int] = (0, 0)
    """(word errors, reference words)."""
    persons_added: int | None = None
    me_them: tuple[int, int] = (0, 0)
    """(lines marked right, lines marked): ``me`` for the wearer's lines, ``them`` for the others',
    counted once the wearer is enrolled."""
    s_to_card: float | None = None
    """From the scene's first frame to the right card; from the end of their first line when
    they are ``out_of_frame`` (then ``by_voice``)."""
    by_voice: bool = False
    notes: list[str] = field(default_factory=list)


def load_scenes(folder: Path) -> list[Scene]:
    scenes = []
    for path in sorted(folder.glob("*.yaml")):
        scene = Scene.model_validate(yaml.safe_load(path.read_text()))
        scenes.append(scene.model_copy(update={"name": scene.name or path.stem}))
    return scenes


def image(name: str) -> np.ndarray:
    """A packaged photo by name, or an image file."""
    if name == "astronaut":
        import skimage.data

        return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    if name == "t1":
        import insightface

        return cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
    if name in ("players", "gdp"):
        return cv2.imread(str(packaged_model_dir() / f"{name}.jpg"))  # type: ignore[operator]
    import skimage.data

    if name in ("coffee", "rocket", "chelsea"):  # scikit-image's photos without a face in them
        return cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR)
    loaded = cv2.imread(name)
    if loaded is None:
        raise ValueError(f"no such photo: {name}")
    return loaded


def render(shot: Shot, pack: FacePackModel) -> np.ndarray:
    """The glasses' view of one shot."""
    names = [shot.image] if isinstance(shot.image, str) else shot.image
    parts = [image(n) for n in names]
    height = max(p.shape[0] for p in parts)
    picture = np.hstack([cv2.resize(p, None, fx=height / p.shape[0], fy=height / p.shape[0]) for p in parts])
    if shot.only is not None:
        boxes, _ = FaceDetectorModel(pack).predict(picture)
        picture = picture.copy()
        for i, (x1, y1, x2, y2) in enumerate(sorted(boxes[:, :4].astype(int).tolist())):
            if i not in shot.only:
                pad = (x2 - x1) // 3
                picture[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad] = 128
    if shot.face is not None:
        boxes, _ = FaceDetectorModel(pack).predict(picture)
        x1, y1, x2, y2 = sorted(boxes[:, :4].astype(int).tolist())[shot.face]
        pad = (x2 - x1) // 2
        crop = picture[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad]
        picture = cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    if shot.pixels:
        h, w = picture.shape[:2]
        picture = cv2.resize(cv2.resize(picture, (shot.pixels, max(1, shot.pixels * h // w))), (w, h))
    return cv2.flip(picture, 1) if shot.flip else picture


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word-level edit distance and the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def me_them(lines: list[Line], marked: list[dict[str, str]]) -> tuple[int, int]:
    """(right, marked) over the encounter's lines that carry a speaker: each is the scene line
    with the most words in common with it, and is right when it is ``me`` exactly for the
    wearer's lines."""
    right = total = 0
    for x in marked:
        if x.get("speaker") not in (ME, THEM):
            continue
        heard = set(words(x.get("text", "")))
        line = max(lines, key=lambda line: len(heard & set(words(line.text))))
        total += 1
        right += (x["speaker"] == ME) == line.wearer
    return right, total


class Evaluation:
    """Plays scenes through the stages and scores them."""

    def __init__(
        self, client: redis.Redis, settings: ServiceSettings, root: Path, realtime: bool,
        context: bool = True, page: PageWatch | None = None, voice: bool = True,
    ) -> None:  # fmt: skip
        self.redis = client
        self.page = page
        self.voice = VoiceHandler(VoiceModelSettings()).load() if voice else None
        self.settings = settings
        self.root = root
        self.realtime = realtime
        self.pack = FacePackModel(FaceModelSettings(model_root=root / "insightface")).load()
        self.faces = FaceHandler(self.pack.settings, self.pack)
        self.whisper = TranscriberHandler(
            WhisperSettings(),
            WhisperSpeechModel(WhisperSettings()),
            SessionContext(client) if context else None,
        )
        self.live = LiveWords(WhisperSettings(), self.whisper.model, client, self.whisper.hotwords)
        self.memory_settings = MemorySettings(
            redis_url=settings.redis_url, consumer=settings.consumer, wearer_name=WEARER,
            encounter=EncounterSettings(gap_s=GAP_S, tick_s=0.05),
        )  # fmt: skip
        self.memory = MemoryHandler(client, self.memory_settings)
        self.scribe = Scribe(client, self.memory_settings)
        self.vad = SileroVadModel()
        self.labels: dict[str, str] = {}
        self.enrolled = False
        self.clock = time.time() - 30 * 86400.0  # scenes happen DAYS_APART apart; evaluate() sets the start

    def write(self, scene: Scene, folder: Path) -> tuple[Path, float | None]:
        """The scene as replay files; returns the WAV and where in it the first line that is not
        the wearer's ends (seconds; ``None`` when every line is the wearer's)."""
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        pause = np.zeros(int(0.8 * RATE), np.float32)
        parts = [pause]
        them_end_s = None
        for line in scene.lines:
            start, said = sum(len(p) for p in parts), self._audio(line)
            parts += [said, pause]
            if not line.wearer and them_end_s is None:  # a recording's trailing silence is no speech
                loud = np.flatnonzero(np.abs(said) > 0.05 * max(float(np.abs(said).max(initial=0)), 1e-6))
                them_end_s = (start + (loud[-1] if len(loud) else len(said))) / RATE
        audio = np.concatenate(parts)
        seconds = len(audio) / RATE
        shots = [encode_jpeg(render(s, self.pack), quality=88) for s in scene.frames]
        for i in range(int(seconds * scene.fps)):
            (folder / "frames" / f"{i:04d}.jpg").write_bytes(
                shots[i * len(shots) // int(seconds * scene.fps)]
            )
        with wave.open(str(folder / "audio.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
        return folder / "audio.wav", them_end_s

    @staticmethod
    def _audio(line: Line) -> np.ndarray:
        if line.wav:
            from faster_whisper import decode_audio

            return decode_audio(line.wav, sampling_rate=RATE)
        return speak(line.voice, line.text)

    def play(self, scene: Scene, index: int) -> Score:
        """Replay one scene through every stage and score what came out."""
        wav, them_end_s = self.write(scene, self.root / f"{index:02d}-{scene.name}")
        before = {s: self.redis.xlen(s) for s in ("recalls", "encounters", "transcripts", "frames")}
        started = time.time()
        persons = {p.id for p in self.memory.admin.list()}
        capture = CaptureSettings(redis_url=self.settings.redis_url, session=f"eval-{index}-{scene.name}")
        capture.frames = capture.frames.model_copy(update={"source": str(wav.parent / "frames")})
        capture.audio = capture.audio.model_copy(update={"realtime": self.realtime})
        runner = CaptureRunner(capture, Publisher(self.redis, capture, threading.Event()), self.vad)
        runner.handler.start_clock(self.clock if not self.realtime else time.time())
        them_said = runner.handler.t0 + them_end_s if them_end_s is not None else None
        if scene.enroll and self.voice is not None:
            self._enroll(scene.enroll)
            self.enrolled = True
        self.clock += DAYS_APART * 86400.0
        with self._live_stages():
            runner.replay(wav)
        self._run_stages()
        time.sleep(GAP_S + 0.2)  # the scene's conversation goes quiet
        self._run_stages()
        return self.score(scene, before, persons, started, capture.session, them_said)

    def _enroll(self, recordings: list[str]) -> None:
        """``convo wearer enroll`` for the scene's wearer."""
        from faster_whisper import decode_audio

        assert self.voice is not None
        vectors = [self.voice.model.embed(decode_audio(w, sampling_rate=RATE))[0] for w in recordings]
        self.memory.wearer.enroll([v for v in vectors if len(v)])

    @contextmanager
    def _live_stages(self) -> Iterator[None]:
        """At real-time speed every stage runs while the scene plays, as in the stack, so that the
        time from a face's frame to its card is what the wearer would see."""
        if not self.realtime:
            yield
            return
        stop = threading.Event()
        consumers = [
            Consumer(self.redis, self.settings, "face", {FrameMessage: self.faces}, stop=stop),
            Consumer(self.redis, self.settings, "transcriber", self._transcriber, stop=stop),
            Consumer(
                self.redis,
                self.memory_settings,
                "memory",
                self.memory.handlers,
                stop=stop,
                ticker=self.memory,
            ),
            self._scribe(stop),
        ]
        if self.voice is not None:
            consumers.append(
                Consumer(self.redis, self.settings, "voice", {AudioSegmentMessage: self.voice}, stop=stop)
            )
        threads = [threading.Thread(target=c.run, daemon=True) for c in consumers]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)

    def _run_stages(self) -> None:
        """Faces first, as in the running stack: a frame's card is out in a fraction of a second,
        while a segment is transcribed only after its speech ends."""
        s, m = self.settings, self.memory_settings
        Consumer(self.redis, s, "face", {FrameMessage: self.faces}).run(burst=True)
        Consumer(self.redis, m, "memory", self.memory.handlers, ticker=self.memory).run(burst=True)
        Consumer(self.redis, s, "transcriber", self._transcriber).run(burst=True)
        if self.voice is not None:
            Consumer(self.redis, s, "voice", {AudioSegmentMessage: self.voice}).run(burst=True)
        Consumer(self.redis, m, "memory", self.memory.handlers, ticker=self.memory).run(burst=True)
        self._scribe().run(burst=True)

    def _scribe(self, stop: threading.Event | None = None) -> Consumer:
        return Consumer(
            self.redis, self.memory_settings, "scribe", {ConversationMessage: self.scribe}, stop=stop,
            ticker=self.scribe, committed=self.scribe.committed,
        )  # fmt: skip

    @property
    def _transcriber(self) -> dict[type[StreamMessage], Callable[..., list]]:
        """Segments, then live words, as ``python -m services.transcriber`` wires them."""
        return {AudioSegmentMessage: self.whisper, PartialSegmentMessage: self.live}

    def _new(self, stream: str, since: int) -> list[dict[bytes, bytes]]:
        return [f for _, f in self.redis.xrange(stream)][since:]

    def score(
        self, scene: Scene, before: dict[str, int], persons: set[str], started: float, session: str,
        them_said: float | None = None,
    ) -> Score:  # fmt: skip
        """``session``: the scene's capture session; ``them_said``: the capture time at which the
        first line not the wearer's ended."""
        out = Score(scene.name)
        cards = self._shown(before["recalls"], started, session)
        encounters = [EncounterMessage.from_fields(f) for f in self._new("encounters", before["encounters"])]
        heard = " ".join(
            TranscriptMessage.from_fields(f).text for f in self._new("transcripts", before["transcripts"])
        )
        out.words = word_errors(" ".join(line.text for line in scene.lines), heard)
        expect = scene.expect
        if expect.person is not None:
            out.attribution = self._attribution(expect.person, encounters, out)
        if self.enrolled:
            out.me_them = me_them(scene.lines, [x for e in encounters for x in e.lines])
        if expect.card is not None or expect.not_card:
            out.identity = self._identity(expect, cards, out)
        if expect.crowd:
            out.persons_added = len({p.id for p in self.memory.admin.list()} - persons)
        pid = self.labels.get(expect.person or "")
        stored = self.memory.store.profile(pid) if pid and self.memory.store.repo.exists(pid) else None
        out.names = self._value(expect.name, stored.name if stored else "")
        out.companies = self._value(expect.company, stored.company if stored else "")
        if stored and expect.name and not out.names[0]:
            out.notes.append(f"name stored as {stored.name!r}")
        if out.words[0]:
            out.notes.append(f"heard {heard!r}")
        facts = " ".join(f.text for f in stored.facts) if stored else ""
        out.facts = (sum(said(f, words(facts), contiguous=False) for f in expect.facts), len(expect.facts))
        frames = [FrameMessage.from_fields(f) for f in self._new("frames", before["frames"])]
        right = [c for c in cards if self.labels.get(expect.card or "") == c.person]
        if self.realtime and frames and right:  # capture's clock is the wall clock the page uses
            out.by_voice = expect.out_of_frame
            heard = them_said if out.by_voice and them_said is not None else frames[0].t
            out.s_to_card = right[0].t - heard
        return out

    def _shown(self, since_entry: int, started: float, session: str) -> list[Shown]:
        """What the overlay showed during the scene: each card that came on screen, once, from the
        page in Chromium when there is one, else from the ``recalls`` stream (when written). Only
        the scene's own cards count: one of the scene before that is still up, or redrawn, does
        not (its recall is of another capture session)."""
        recalls = [
            (eid, c)
            for eid, f in self.redis.xrange("recalls")[since_entry:]
            for c in [RecallMessage.from_fields(f)]
            if c.recall_id.startswith(f"{session}-")
        ]
        if self.page is None:
            return [Shown(int(eid.split(b"-")[0]) / 1000, c.person_id, True, c.summary) for eid, c in recalls]
        time.sleep(0.5)  # the page's event stream polls Redis every 100 ms
        mine = {c.person_id for _, c in recalls}
        shown, last = [], ("", False)
        for change in self.page.cards(since=started):
            if (change.person, change.shown) != last and change.shown and change.person in mine:
                shown.append(change)
            last = (change.person, change.shown)
        return shown

    def _attribution(self, label: str, encounters: list[EncounterMessage], out: Score) -> float:
        if not encounters:
            out.notes.append("no encounter recorded")
            return 0.0
        pid = encounters[0].person_id
        known = self.labels.get(label)
        if known is None:  # a first meeting: a person nobody else is
            right = pid not in self.labels.values()
            self.labels[label] = pid
        else:
            right = pid == known
        if not right:
            out.notes.append(f"encounter went to {pid}, expected {label}")
        return float(right)

    def _identity(self, expect: Expect, cards: list[Shown], out: Score) -> float:
        wrong = [c for c in cards if c.person in {self.labels.get(n) for n in expect.not_card}]
        if expect.card is None:
            return 0.0 if wrong else 1.0
        if not cards:
            out.notes.append("no card shown")
            return 0.0
        pid = self.labels.get(expect.card) or cards[-1].person  # a first meeting: the card's person
        self.labels.setdefault(expect.card, pid)
        shown = [c.person == pid for c in cards]
        if not all(shown):
            first = next(c for c in cards if c.person != pid)
            out.notes.append(
                f"{shown.count(False)} of {len(cards)} cards showed someone else (first: {first.text[:60]!r})"
            )
        return sum(shown) / len(shown) * (0.0 if wrong else 1.0)

    @staticmethod
    def _value(expected: str | None, stored: str) -> tuple[int, int, int]:
        right = bool(expected) and said(expected or "", words(stored)) and said(stored, words(expected or ""))
        return int(right), int(bool(expected)), int(bool(stored))


@dataclass(frozen=True)
class Scorecard:
    scores: list[Score]

    def figures(self) -> dict[str, float]:
        def mean(values: list[float | None]) -> float:
            present = [v for v in values if v is not None]
            return sum(present) / len(present) if present else float("nan")

        def ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        s = self.scores
        delays = sorted(x.s_to_card for x in s if x.s_to_card is not None and not x.by_voice)
        by_voice = [x.s_to_card for x in s if x.s_to_card is not None and x.by_voice]
        return {
            "identity_accuracy": mean([x.identity for x in s]),
            "attribution_accuracy": mean([x.attribution for x in s]),
            "name_recall": ratio(sum(x.names[0] for x in s), sum(x.names[1] for x in s)),
            "name_precision": ratio(sum(x.names[0] for x in s), sum(x.names[2] for x in s if x.names[1])),
            "company_recall": ratio(sum(x.companies[0] for x in s), sum(x.companies[1] for x in s)),
            "fact_recall": ratio(sum(x.facts[0] for x in s), sum(x.facts[1] for x in s)),
            "wer": ratio(sum(x.words[0] for x in s), sum(x.words[1] for x in s)),
            "me_them_accuracy": ratio(sum(x.me_them[0] for x in s), sum(x.me_them[1] for x in s)),
            "crowd_persons_added": max(
                [x.persons_added for x in s if x.persons_added is not None], default=0
            ),
            "p50_s_to_card": float(np.percentile(delays, 50)) if delays else float("nan"),
            "p95_s_to_card": float(np.percentile(delays, 95)) if delays else float("nan"),
            "max_s_to_voice_card": float(max(by_voice, default=float("nan"))),
        }


@contextmanager
def private_stack() -> Iterator[tuple[redis.Redis, ServiceSettings, Path]]:
    """A redis-server of its own in a temporary folder, with fast retry timings."""
    with tempfile.TemporaryDirectory(prefix="convo-eval-") as tmp, RedisServer(Path(tmp) / "redis") as server:
        settings = ServiceSettings(
            redis_url=server.url,
            consumer=ConsumerSettings(claim_idle_ms=300, claim_every_s=0.1, block_ms=100),
        )
        yield redis.Redis.from_url(server.url), settings, Path(tmp)


def evaluate(
    folder: Path, realtime: bool = False, context: bool = True, page: bool = True, voice: bool = True
) -> Scorecard:
    """Play every scene of ``folder`` in order on a private stack and score them. ``context``: the
    transcriber gets the names of the people in view as hotwords (the stack's default). ``page``:
    identity and time to card are read from the overlay page in headless Chromium. ``voice``: the
    voice stage runs, and memory hears who speaks."""
    scenes = load_scenes(folder)
    if not scenes:
        raise ValueError(f"no scenes (*.yaml) in {folder}")
    with private_stack() as (client, settings, root), ExitStack() as stack:
        watch = stack.enter_context(PageWatch(settings.redis_url)) if page else None
        run = Evaluation(client, settings, root, realtime, context, watch, voice)
        run.clock = time.time() - DAYS_APART * 86400.0 * (len(scenes) + 1)  # the last one still in the past
        return Scorecard([run.play(scene, i) for i, scene in enumerate(scenes)])
