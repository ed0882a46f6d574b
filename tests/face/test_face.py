"""The face stage on real photos with the real buffalo_s weights.

Numbers seen with buffalo_s on these photos (see docs/ARCHITECTURE.md, "Face numbers"):
the same face after a flip, rescale, crop or JPEG q=30 re-encode scores 0.94-0.98; different
people score at most 0.33 (players.jpg), 0.23 in t1.jpg.
"""

import itertools

import cv2
import numpy as np
import pytest
import redis

from services.face.handler import FaceHandler, iou
from shared.consumer import Consumer
from shared.images import decode_jpeg
from shared.schemas import FaceMessage, FrameMessage
from shared.settings import ServiceSettings
from tests.face.conftest import frame, jpeg_in_mode, photo, png_bytes

SAME_FACE_MIN = 0.85
OTHER_FACE_MAX = 0.40


def vectors(faces: list[FaceMessage]) -> np.ndarray:
    return np.stack([f.vector() for f in faces])


def test_group_photo_gives_every_face_with_distinct_identities(face_handler: FaceHandler) -> None:
    faces = face_handler(frame(photo("t1")))
    assert len(faces) == 6
    sims = vectors(faces) @ vectors(faces).T
    pairs = [sims[i, j] for i, j in itertools.combinations(range(6), 2)]
    assert max(pairs) < OTHER_FACE_MAX, f"two people look alike: {max(pairs):.3f}"
    assert len({f.face_id for f in faces}) == 6
    for face in faces:
        assert face.det_score >= 0.5 and len(face.landmarks) == 5
        thumb = cv2.imdecode(np.frombuffer(face.thumb, np.uint8), cv2.IMREAD_COLOR)
        assert max(thumb.shape[:2]) == 96


def test_team_photo_small_and_blurred_faces_are_gated_and_counted(face_handler: FaceHandler) -> None:
    msg = frame(photo("players"))
    faces = face_handler(msg)
    detected = len(face_handler.detector.predict(decode_jpeg(msg.image, 10**8))[0])
    rejected = sum(face_handler.rejected.values())
    assert len(faces) >= 10, "most of the team is recognisable"
    assert rejected > 0 and len(faces) + rejected == detected, face_handler.rejected
    sims = vectors(faces) @ vectors(faces).T
    assert sims[~np.eye(len(faces), dtype=bool)].max() < OTHER_FACE_MAX


@pytest.mark.parametrize(
    "variant",
    [
        lambda im: cv2.flip(im, 1),
        lambda im: cv2.resize(im, None, fx=0.5, fy=0.5),
        lambda im: im[20:400, 50:450],
        lambda im: cv2.imdecode(
            cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR
        ),
    ],
    ids=["flip", "half-size", "crop", "jpeg-q30"],
)
def test_same_face_after_changes_matches_itself(face_handler: FaceHandler, variant) -> None:  # type: ignore[no-untyped-def]
    [original] = face_handler(frame(photo("astronaut")))
    [changed] = face_handler(frame(np.ascontiguousarray(variant(photo("astronaut")))))
    assert float(original.vector() @ changed.vector()) > SAME_FACE_MIN


def test_same_person_across_photos_beats_every_other_person(face_handler: FaceHandler) -> None:
    astronaut = face_handler(frame(photo("astronaut")))[0].vector()
    others = vectors(face_handler(frame(photo("t1"))) + face_handler(frame(photo("gdp"))))
    assert (others @ astronaut).max() < OTHER_FACE_MAX


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_face_gives_no_faces(face_handler: FaceHandler, name: str) -> None:
    assert face_handler(frame(photo(name))) == []


def test_blurred_face_is_rejected_as_blur(face_handler: FaceHandler) -> None:
    assert face_handler(frame(cv2.GaussianBlur(photo("astronaut"), (15, 15), 5))) == []
    assert face_handler.rejected["blur"] == 1


def header_bomb() -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim 20000x20000 pixels."""
    data = bytearray(cv2.imencode(".jpg", photo("astronaut"))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
    return bytes(data)


BAD_FRAMES = {
    "truncated": (
        lambda: cv2.imencode(".jpg", photo("astronaut"))[1].tobytes()[:5000],
        "not a readable JPEG",
    ),
    "png-as-jpeg": (lambda: png_bytes(photo("astronaut")), "image is PNG, not JPEG"),
    "zero-bytes": (lambda: b"", "image is empty"),
    "header-bomb": (header_bomb, "400000000 pixels"),
    "cmyk": (lambda: jpeg_in_mode(photo("astronaut"), "CMYK"), "colour mode CMYK"),
    "grayscale": (lambda: jpeg_in_mode(photo("astronaut"), "L"), "colour mode L;"),
    "wrong-size": (
        lambda: cv2.imencode(".jpg", photo("coffee"))[1].tobytes(),
        "but the message says 512x512",
    ),
}


def test_bad_frames_go_to_dlq_and_good_ones_still_flow(
    r: redis.Redis, settings: ServiceSettings, face_handler: FaceHandler, caplog: pytest.LogCaptureFixture
) -> None:
    r.xadd("frames", frame(photo("astronaut"), "good-1").to_fields())
    for name, (make, _) in BAD_FRAMES.items():
        r.xadd("frames", frame(make(), name, size=(512, 512)).to_fields())
    r.xadd("frames", frame(photo("t1"), "good-2").to_fields())
    stats = Consumer(r, settings, "face", {FrameMessage: face_handler}).run(burst=True)
    assert (stats.processed, stats.dead_lettered) == (2, len(BAD_FRAMES))
    letters = {f[b"f.frame_id"].decode(): f[b"error"].decode() for _, f in r.xrange("dlq")}
    for name, (_, error) in BAD_FRAMES.items():
        assert error in letters[name], letters[name]
        assert error in caplog.text
    faces = [FaceMessage.from_fields(f) for _, f in r.xrange("faces")]
    assert sorted(f.frame_id for f in faces) == ["good-1"] + ["good-2"] * 6


def test_one_frame_at_a_time_and_in_a_batch_agree(face_handler: FaceHandler) -> None:
    frames = [frame(photo("t1"), "a"), frame(photo("astronaut"), "b"), frame(photo("coffee"), "c")]
    batched = face_handler.handle_batch(frames)
    single = [face_handler(f) for f in frames]
    assert [len(b) for b in batched] == [6, 1, 0]  # type: ignore[arg-type]
    for b, s in zip(batched, single, strict=True):
        assert isinstance(b, list)
        for fb, fs in zip(b, s, strict=True):
            assert fb.face_id == fs.face_id and float(fb.vector() @ fs.vector()) > 0.999


def in_the_same_place(face_handler: FaceHandler, image: np.ndarray) -> np.ndarray:
    """The first face of ``image``, with a margin, at a fixed place and size on a grey frame."""
    boxes, _ = face_handler.detector.predict(image)
    x1, y1, x2, y2 = boxes[0][:4].astype(int)
    pad = (x2 - x1) // 2
    crop = image[max(y1 - pad, 0) : y2 + pad, max(x1 - pad, 0) : x2 + pad]
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[120:360, 200:440] = cv2.resize(crop, (240, 240))
    return canvas


def test_a_face_that_stays_keeps_its_embedding_for_reuse_s(face_handler: FaceHandler) -> None:
    """A team at 2 frames a second: a face that stays where it was, looking the same, takes its
    embedding from the frame before for up to ``reuse_s``, then is embedded anew. A frame with
    nobody in it, another session, faces that moved, or another face in the same place never
    take one."""
    team = photo("players")

    def at(t: float, image: np.ndarray = team, session: str = "s") -> list[FaceMessage]:
        return face_handler(frame(image, f"{session}-{t}").model_copy(update={"t": t, "session": session}))

    first = at(10.0)
    assert len(first) >= 15 and face_handler.reused == 0
    again = at(10.5)
    assert face_handler.reused == len(first)
    assert [f.embedding for f in again] == [f.embedding for f in first]
    at(12.5)  # 2.5 s after the embeddings were computed
    assert face_handler.reused == len(first), "embedded anew after reuse_s"
    at(13.0, session="other")
    at(13.0, photo("coffee"))  # nobody in view for a moment
    at(13.5)
    at(14.0, np.roll(team, 40, axis=1))  # the wearer turned their head
    assert face_handler.reused == len(first)

    sarah, other = (
        in_the_same_place(face_handler, photo("astronaut")),
        in_the_same_place(face_handler, photo("t1")),
    )
    [before] = at(20.0, sarah)
    [after] = at(20.5, other)
    overlap = iou(np.array(before.bbox), np.array(after.bbox))
    assert overlap >= face_handler.settings.reuse_iou, f"the same place ({overlap:.2f})"
    assert face_handler.reused == len(first), "another face there is embedded anew"
    assert float(before.vector() @ after.vector()) < OTHER_FACE_MAX
