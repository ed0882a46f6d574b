"""Frames in, one ``FaceMessage`` per usable face out."""

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from prometheus_client import Counter

from services.face.model import FaceDetectorModel, FaceEmbedderModel, FacePackModel
from services.face.settings import FaceModelSettings
from shared.consumer import BatchedHandler
from shared.images import decode_jpeg, encode_jpeg
from shared.schemas import FaceMessage, FrameMessage, embedding_to_bytes

log = logging.getLogger(__name__)

REJECTED = Counter("convo_face_rejected_total", "Detected faces dropped by a quality gate", ["reason"])
REUSED = Counter("convo_face_reused_total", "Faces that took the embedding of the same face a frame before")
BLUR_SIDE = 112  # faces are compared for sharpness at the recogniser's input size
SESSIONS_KEPT = 64  # sessions whose last frame's faces are kept for reuse


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


SAME_PATCH = 0.9
"""Correlation of two faces' 16x16 grey patches above which they are the same face: the same face
re-encoded as JPEG q=60 scores 0.99; two people of the team photo at most 0.81."""


def patch(bgr: np.ndarray, box: np.ndarray, side: int = 16) -> np.ndarray:
    """The face's box as a small grey patch, zero-mean and unit-norm, for :data:`SAME_PATCH`."""
    h, w = bgr.shape[:2]
    x1, y1 = min(max(int(box[0]), 0), w - 1), min(max(int(box[1]), 0), h - 1)
    x2, y2 = max(min(int(box[2]), w), x1 + 1), max(min(int(box[3]), h), y1 + 1)
    grey = cv2.cvtColor(bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    flat = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    flat -= flat.mean()
    return flat / (float(np.linalg.norm(flat)) + 1e-6)


@dataclass(frozen=True)
class Embedded:
    """A face of a session's last frame: its box and patch, its embedding, and the frame time the
    embedding was computed at."""

    box: np.ndarray
    patch: np.ndarray
    vector: np.ndarray
    t: float


def blur_variance(bgr: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the face crop at a fixed size: low means blurred."""
    h, w = bgr.shape[:2]
    x1, y1 = max(int(box[0]), 0), max(int(box[1]), 0)
    x2, y2 = min(int(box[2]), w), min(int(box[3]), h)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    gray = cv2.cvtColor(bgr[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(cv2.resize(gray, (BLUR_SIDE, BLUR_SIDE)), cv2.CV_64F).var())


def thumbnail(bgr: np.ndarray, box: np.ndarray, side: int) -> bytes:
    """A JPEG of the face with a margin, its longest side ``side`` pixels."""
    h, w = bgr.shape[:2]
    x1, y1, x2, y2 = box[:4]
    margin = 0.25 * max(x2 - x1, y2 - y1)
    crop = bgr[
        max(int(y1 - margin), 0) : min(int(y2 + margin), h),
        max(int(x1 - margin), 0) : min(int(x2 + margin), w),
    ]
    scale = side / max(crop.shape[:2])
    return encode_jpeg(cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), quality=80)


class FaceHandler(BatchedHandler):
    """Detects, quality-gates and embeds the faces of frames; several frames share one embedder call."""

    def __init__(self, settings: FaceModelSettings, pack: FacePackModel | None = None) -> None:
        self.settings = settings
        pack = pack or FacePackModel(settings)
        self.detector = FaceDetectorModel(pack)
        self.embedder = FaceEmbedderModel(pack)
        self.rejected: collections.Counter[str] = collections.Counter()
        self.reused = 0
        self._last: collections.OrderedDict[str, tuple[float, list[Embedded]]] = collections.OrderedDict()
        """Per session, the time of its last frame and that frame's faces (this replica's frames only)."""

    def load(self) -> "FaceHandler":
        self.detector.load()
        return self

    def handle_batch(self, msgs: Sequence[FrameMessage]) -> list[list[FaceMessage] | Exception]:
        results: list[list[FaceMessage] | Exception] = []
        found: list[
            tuple[int, FrameMessage, np.ndarray, np.ndarray, np.ndarray, np.ndarray, Embedded | None]
        ] = []
        for i, msg in enumerate(msgs):
            try:
                image = decode_jpeg(msg.image, self.settings.max_pixels, (msg.width, msg.height))
                boxes, kps = self.detector.predict(image)
            except Exception as exc:
                results.append(exc)
                continue
            results.append([])
            for box, landmarks in self._gate(image, boxes, kps):
                looks = patch(image, box)
                found.append((i, msg, image, box, landmarks, looks, self._same_face(msg, box, looks)))
        todo = [(image, kps) for _, _, image, _, kps, _, same in found if same is None]
        fresh = iter(self.embedder.predict(todo) if todo else [])
        per_frame = collections.Counter(i for i, *_ in found)
        kept: dict[int, list[Embedded]] = {i: [] for i, r in enumerate(results) if isinstance(r, list)}
        for i, msg, image, box, kps, looks, same in found:
            # a reused face keeps the earlier vector and when it was computed, with its box of now
            vector, t = (same.vector, same.t) if same else (next(fresh), msg.t)
            seen = Embedded(box, looks, vector, t)
            kept[i].append(seen)
            faces = results[i]
            assert isinstance(faces, list)
            faces.append(
                FaceMessage(
                    face_id=f"{msg.frame_id}:{len(faces)}", frame_id=msg.frame_id,
                    session=msg.session, t=msg.t,
                    bbox=[round(float(v), 1) for v in box[:4]], det_score=round(float(box[4]), 4),
                    landmarks=[[round(float(x), 1), round(float(y), 1)] for x, y in kps],
                    embedding=embedding_to_bytes(seen.vector),
                    thumb=thumbnail(image, box, self.settings.thumb_px),
                    width=image.shape[1], height=image.shape[0], faces_in_frame=per_frame[i],
                )
            )  # fmt: skip
        reused = sum(same is not None for *_, same in found)
        self.reused += reused
        REUSED.inc(reused)
        self._remember([(msgs[i], faces) for i, faces in kept.items()])
        return results

    def _same_face(self, msg: FrameMessage, box: np.ndarray, looks: np.ndarray) -> Embedded | None:
        """The face of the session's previous frame that this one is (their boxes overlap, and what
        is in them looks the same), if its embedding is recent enough to reuse."""
        last = self._last.get(msg.session)
        if last is None or not 0 < msg.t - last[0] <= self.settings.reuse_s:
            return None
        best = max(last[1], key=lambda e: iou(e.box, box), default=None)
        if (
            best is None
            or msg.t - best.t > self.settings.reuse_s
            or iou(best.box, box) < self.settings.reuse_iou
        ):
            return None
        return best if float(best.patch @ looks) >= SAME_PATCH else None

    def _remember(self, frames: list[tuple[FrameMessage, list[Embedded]]]) -> None:
        """Keep each session's newest frame and its faces (none, when nobody is in it: a face that
        then appears where another was is embedded anew)."""
        for msg, faces in frames:
            last = self._last.get(msg.session)
            if last is None or msg.t >= last[0]:
                self._last[msg.session] = (msg.t, faces)
                self._last.move_to_end(msg.session)
        while len(self._last) > SESSIONS_KEPT:
            self._last.popitem(last=False)

    def _gate(
        self, image: np.ndarray, boxes: np.ndarray, kps: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        kept = []
        for box, landmarks in zip(boxes, kps, strict=True):
            side = min(box[2] - box[0], box[3] - box[1])
            if box[4] < self.settings.min_det_score:
                reason = "det_score"
            elif side < self.settings.min_face_px:
                reason = "size"
            elif blur_variance(image, box) < self.settings.min_blur_var:
                reason = "blur"
            else:
                kept.append((box, landmarks))
                continue
            self.rejected[reason] += 1
            REJECTED.labels(reason).inc()
        return kept
