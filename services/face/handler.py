"""Frames in, one ``FaceMessage`` per usable face out."""

import collections
import logging
from collections.abc import Sequence

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
BLUR_SIDE = 112  # faces are compared for sharpness at the recogniser's input size


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

    def load(self) -> "FaceHandler":
        self.detector.load()
        return self

    def handle_batch(self, msgs: Sequence[FrameMessage]) -> list[list[FaceMessage] | Exception]:
        results: list[list[FaceMessage] | Exception] = []
        pending: list[tuple[int, FrameMessage, np.ndarray, np.ndarray, np.ndarray]] = []
        for i, msg in enumerate(msgs):
            try:
                image = decode_jpeg(msg.image, self.settings.max_pixels, (msg.width, msg.height))
                boxes, kps = self.detector.predict(image)
            except Exception as exc:
                results.append(exc)
                continue
            results.append([])
            for box, landmarks in self._gate(image, boxes, kps):
                pending.append((i, msg, image, box, landmarks))
        embeddings = self.embedder.predict([(image, kps) for _, _, image, _, kps in pending])
        per_frame = collections.Counter(i for i, *_ in pending)
        for (i, msg, image, box, kps), emb in zip(pending, embeddings, strict=True):
            faces = results[i]
            assert isinstance(faces, list)
            faces.append(
                FaceMessage(
                    face_id=f"{msg.frame_id}:{len(faces)}", frame_id=msg.frame_id,
                    session=msg.session, t=msg.t,
                    bbox=[round(float(v), 1) for v in box[:4]], det_score=round(float(box[4]), 4),
                    landmarks=[[round(float(x), 1), round(float(y), 1)] for x, y in kps],
                    embedding=embedding_to_bytes(emb), thumb=thumbnail(image, box, self.settings.thumb_px),
                    width=image.shape[1], height=image.shape[0], faces_in_frame=per_frame[i],
                )
            )  # fmt: skip
        return results

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
