"""Real photos of people that ship in installed packages, and one loaded buffalo_s pack."""

import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import insightface
import numpy as np
import pytest
import skimage.data

from services.face.handler import FaceHandler
from services.face.model import FacePackModel, packaged_model_dir
from services.face.settings import FaceModelSettings
from shared.images import encode_jpeg
from shared.schemas import FrameMessage

IMAGES = Path(insightface.__file__).parent / "data" / "images"


def photo(name: str) -> np.ndarray:
    """A BGR photo by name: t1 (6 faces), players (a team), gdp (5), astronaut (1), coffee (0)."""
    if name in ("astronaut", "coffee", "chelsea"):
        return cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2BGR)
    path = IMAGES / "t1.jpg" if name == "t1" else packaged_model_dir() / f"{name}.jpg"  # type: ignore[operator]
    return cv2.imread(str(path))


def frame(
    image: np.ndarray | bytes, frame_id: str = "f1", size: tuple[int, int] | None = None
) -> FrameMessage:
    data = image if isinstance(image, bytes) else encode_jpeg(image, quality=90)
    if size is None:
        assert isinstance(image, np.ndarray)
        size = (image.shape[1], image.shape[0])
    return FrameMessage(frame_id=frame_id, session="s", t=1.0, width=size[0], height=size[1], image=data)


@pytest.fixture
def face_handler(face_settings: FaceModelSettings, face_pack: FacePackModel) -> Iterator[FaceHandler]:
    yield FaceHandler(face_settings, face_pack)


def png_bytes(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def jpeg_in_mode(image: np.ndarray, mode: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image[:, :, ::-1]).convert(mode).save(out, format="JPEG")
    return out.getvalue()
