"""JPEG checks and conversions shared by the services that take camera frames."""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.schemas import BadMessageError


def decode_jpeg(data: bytes, max_pixels: int, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a colour JPEG to a BGR array, refusing anything else with :class:`BadMessageError`.

    The header is read first, so a header that claims a huge image is refused before any
    pixel memory is allocated.
    """
    if not data:
        raise BadMessageError("image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height), mode = img.format, img.size, img.mode
            if fmt != "JPEG":
                raise BadMessageError(f"image is {fmt}, not JPEG")
            if width * height > max_pixels:
                raise BadMessageError(
                    f"image header claims {width}x{height} pixels, over the limit of {max_pixels}"
                )
            if mode != "RGB":
                raise BadMessageError(f"image has colour mode {mode}; frames must be 3-channel colour JPEG")
            if expect_size is not None and (width, height) != expect_size:
                raise BadMessageError(
                    f"image is {width}x{height} but the message says {expect_size[0]}x{expect_size[1]}"
                )
            img.load()  # raises on truncated or corrupt data instead of padding it with grey
            rgb = np.asarray(img)
    except Image.DecompressionBombError as exc:
        raise BadMessageError(f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, BadMessageError):
            raise
        raise BadMessageError(f"image is not a readable JPEG: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """Encode a BGR array as JPEG."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])).save(out, format="JPEG", quality=quality)
    return out.getvalue()
