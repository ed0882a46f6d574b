"""The demo conversation of ``make run``: real espeak-ng speech and real face photos, as replay files.

Meeting 1: the wearer (Alex) meets Sarah Chen from Stripe at the climbing gym. Meeting 2:
Tom from a bakery. Meeting 3: Sarah again, in another photo. Each meeting is a folder with
``audio.wav`` (two voices, with pauses) and ``frames/`` (the glasses' view, 2 per second).
"""

import hashlib
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from shared.images import encode_jpeg

RATE = 16_000
WEARER = "en-us+m3"
PAUSE_S = 1.2


@dataclass(frozen=True)
class Meeting:
    name: str
    face: str
    lines: list[tuple[str, str]]  # (voice, text)


MEETINGS = [
    Meeting(
        "meeting-1-sarah",
        "sarah",
        [
            (WEARER, "Hello, I am Alex. I do not think we have met."),
            ("en-gb+f4", "Hi Alex. I'm Sarah Chen from Stripe."),
            ("en-gb+f3", "I work on rate limits."),
            (WEARER, "Is this your first time at the climbing gym?"),
            ("en-gb+f3", "Every week. We should climb together sometime."),
        ],
    ),
    Meeting(
        "meeting-2-tom",
        "tom",
        [
            ("en-gb", "Hello, my name is Tom Baker."),
            ("en-us", "I run a bakery in town."),
            (WEARER, "Great to meet you, Tom."),
        ],
    ),
    Meeting(
        "meeting-3-sarah-again",
        "sarah-again",
        [
            (WEARER, "Sarah! Good to see you again."),
            ("en-gb+f3", "Hi Alex, how was your week?"),
        ],
    ),
]


def face_photo(name: str) -> np.ndarray:
    """A real photo from an installed package, framed like a 640x480 glasses camera."""
    import insightface
    import skimage.data

    if name in ("sarah", "sarah-again"):
        image = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
        if name == "sarah-again":  # another view of the same face
            image = cv2.flip(image, 1)
    else:
        group = cv2.imread(str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"))
        image = group[0:330, 820:1100]  # one person of the group photo
    canvas = np.full((480, 640, 3), 40, np.uint8)
    scale = min(440 / image.shape[0], 600 / image.shape[1])
    image = cv2.resize(image, None, fx=scale, fy=scale)
    y, x = (480 - image.shape[0]) // 2, (640 - image.shape[1]) // 2
    canvas[y : y + image.shape[0], x : x + image.shape[1]] = image
    return canvas


def speak(voice: str, text: str) -> np.ndarray:
    from faster_whisper import decode_audio

    if not shutil.which("espeak-ng"):
        raise RuntimeError("the demo needs espeak-ng: sudo apt-get install espeak-ng (make setup does this)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "line.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        return decode_audio(str(path), sampling_rate=RATE)


def build(root: Path) -> list[Path]:
    """Write every meeting under ``root`` (reused while the script is unchanged); return their folders."""
    version = hashlib.sha256(repr(MEETINGS).encode()).hexdigest()[:10]
    folders = []
    for meeting in MEETINGS:
        folder = root / version / meeting.name
        folders.append(folder)
        if (folder / "audio.wav").exists():
            continue
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        pause = np.zeros(int(PAUSE_S * RATE), np.float32)
        audio = np.concatenate([pause] + [part for v, t in meeting.lines for part in (speak(v, t), pause)])
        photo = encode_jpeg(face_photo(meeting.face), quality=85)
        for i in range(int(len(audio) / RATE * 2)):
            (folder / "frames" / f"{i:04d}.jpg").write_bytes(photo)
        with wave.open(str(folder / "audio.wav"), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return folders
