"""Start a private ``redis-server``: for the local stack (``convo up``) and for the tests."""

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from shared.acl import ADMIN, password

log = logging.getLogger(__name__)


def ensure_redis_server() -> str:
    """Path of ``redis-server``, installing Debian's package when it is missing and we are root."""
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log.warning("redis-server is missing; installing it with apt-get")
        cmd = ["apt-get", "install", "-y", "-q", "redis-server"]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=True)
            subprocess.run(cmd, capture_output=True, check=True)
        path = shutil.which("redis-server")
        if path:
            return path
    raise RuntimeError(
        "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install "
        "redis-server) or point CONVO_REDIS_URL at a running Redis 7+."
    )


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A ``redis-server`` child process on 127.0.0.1, with AOF persistence in ``data_dir``.

    ``fsync="always"`` makes every acknowledged write durable before Redis answers: a
    SIGKILL loses nothing the services were told had been written. With ``acl_dir`` (made by
    :func:`shared.acl.write`) it loads that ``users.acl`` and the default user is off.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        fsync: str = "always",
        acl_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.fsync = fsync
        self.acl_dir = acl_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            ensure_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--save", "",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.acl_dir is not None:
            args += ["--aclfile", str(Path(self.acl_dir).resolve() / "users.acl")]
        # Its own session: a Ctrl-C meant for the services must not stop Redis under them.
        self.proc = subprocess.Popen(args, start_new_session=True)
        client = self.client(socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client on this server; the ``admin`` user's when ACLs are on."""
        if self.acl_dir is not None:
            kwargs |= {"username": ADMIN, "password": password(self.acl_dir, ADMIN)}
        return redis.Redis(port=self.port, **kwargs)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown, no final AOF flush."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
