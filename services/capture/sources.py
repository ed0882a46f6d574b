"""Audio and frame sources. Each audio source yields 512-sample float32 chunks at 16 kHz mono."""

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from services.capture.settings import CHUNK, SAMPLE_RATE, AudioSettings

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class SourceError(Exception):
    """An input that cannot be read: reported and dead-lettered, then capture goes on."""


def chunked(audio: np.ndarray) -> Iterator[np.ndarray]:
    """Split into 512-sample chunks, zero-padding the last one."""
    for i in range(0, len(audio), CHUNK):
        chunk = audio[i : i + CHUNK]
        yield chunk if len(chunk) == CHUNK else np.pad(chunk, (0, CHUNK - len(chunk)))


def read_audio_file(path: Path) -> np.ndarray:
    """Decode any format PyAV reads, resampled to 16 kHz mono float32."""
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV raises a family of its own errors per container and codec
        raise SourceError(f"{path}: cannot decode audio ({type(exc).__name__}: {exc})") from None
    if audio.size == 0:
        raise SourceError(f"{path}: no audio samples")
    return audio


def recording_seconds(source: Path) -> float:
    """How long the recordings of ``source`` last, from their containers (0 for one unreadable)."""
    import av

    total = 0.0
    for path in audio_files(source):
        try:
            with av.open(str(path)) as container:
                total += (container.duration or 0) / 1_000_000
        except Exception:  # an unreadable file is dead-lettered when it is played
            continue
    return total


def audio_files(source: Path) -> list[Path]:
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    return [source]


def stdin_chunks(stream: BinaryIO | None = None) -> Iterator[np.ndarray]:
    """Raw s16le 16 kHz mono PCM, e.g. ``arecord -f S16_LE -r 16000 -c 1 | python -m services.capture``."""
    stream = stream or sys.stdin.buffer
    while block := stream.read(CHUNK * 2):
        if len(block) % 2:
            block = block[:-1]
        yield from chunked(np.frombuffer(block, dtype="<i2").astype(np.float32) / 32768.0)


def mic_chunks(settings: AudioSettings) -> Iterator[np.ndarray]:
    """The laptop mic through pyaudio, resampled to 16 kHz when opened at another rate."""
    import pyaudio

    pa = pyaudio.PyAudio()
    per_read = int(CHUNK * settings.mic_rate / SAMPLE_RATE)
    try:
        stream = pa.open(
            format=pyaudio.paInt16, channels=1, rate=settings.mic_rate, input=True,
            input_device_index=settings.mic_device, frames_per_buffer=per_read,
        )  # fmt: skip
    except OSError as exc:
        pa.terminate()
        raise SourceError(
            f"cannot open the microphone (device {settings.mic_device!r}, {settings.mic_rate} Hz): {exc}. "
            "List devices with `python -m services.capture --devices`, then set CONVO_AUDIO__MIC_DEVICE "
            "and CONVO_AUDIO__MIC_RATE, or replay a file with CONVO_AUDIO__SOURCE=path.wav."
        ) from None
    try:
        while True:
            pcm = np.frombuffer(stream.read(per_read, exception_on_overflow=False), dtype="<i2")
            audio = pcm.astype(np.float32) / 32768.0
            if settings.mic_rate != SAMPLE_RATE:
                x = np.linspace(0, len(audio) - 1, CHUNK)
                audio = np.interp(x, np.arange(len(audio)), audio).astype(np.float32)
            yield audio
    finally:
        stream.close()
        pa.terminate()


def list_mics() -> list[str]:
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        infos = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
        return [
            f"{i['index']}: {i['name']} ({int(i['defaultSampleRate'])} Hz)"
            for i in infos
            if i["maxInputChannels"] > 0
        ]
    finally:
        pa.terminate()


@dataclass(frozen=True)
class RawFrame:
    """A camera frame before gating: when it was taken and its JPEG."""

    t_offset: float  # seconds from the start of the source
    jpeg: bytes
    ref: str


def image_dir_frames(path: Path, fps: float) -> Iterator[RawFrame]:
    """Images of a directory in name order, one every ``1/fps`` seconds; non-JPEGs are re-encoded."""
    import cv2

    from shared.images import encode_jpeg

    for i, image_path in enumerate(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)):
        data = image_path.read_bytes()
        if image_path.suffix.lower() not in {".jpg", ".jpeg"}:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise SourceError(f"{image_path}: cannot decode image")
            data = encode_jpeg(image)
        yield RawFrame(i / fps, data, image_path.name)


def video_frames(source: str, realtime: bool) -> Iterator[RawFrame]:
    """Frames of a video file, or of camera ``N`` for ``camera:N``, with their timestamps."""
    import cv2

    from shared.images import encode_jpeg

    camera = source.startswith("camera:")
    cap = cv2.VideoCapture(int(source.split(":", 1)[1]) if camera else source)
    if not cap.isOpened():
        raise SourceError(f"cannot open {'camera' if camera else 'video'} {source!r}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    start = time.monotonic()
    i = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                if camera:
                    raise SourceError(f"camera {source!r} stopped delivering frames")
                return
            t = time.monotonic() - start if camera or realtime else i / fps
            yield RawFrame(t, encode_jpeg(image), f"{source}#{i}")
            i += 1
    finally:
        cap.release()
