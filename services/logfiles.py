"""The local stack's log files: one per service in ``.convo/logs/<service>.log`` (supervisord
writes them), read back by ``convo logs`` and by ``convo up`` for the warnings it shows.

Services log JSON lines (``shared/logs.py``); anything else in a file (a traceback, a
library printing to stderr) is shown as it is.
"""

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

LEVEL_STYLE = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}
SHOWN_FIELDS = 4  # extra fields of a line shown after its message; the rest are in the file


@dataclass
class Line:
    service: str
    text: str
    level: str = ""  # empty when the line is not one of ours
    t: str = ""

    @classmethod
    def parse(cls, service: str, text: str) -> "Line":
        try:
            record = json.loads(text)
        except ValueError:
            return cls(service, text)
        if not isinstance(record, dict) or "level" not in record:
            return cls(service, text)
        extra = [f"{k}={v}" for k, v in record.items() if k not in ("t", "level", "logger", "msg", "exc")]
        message = " ".join([str(record.get("msg", "")), *extra[:SHOWN_FIELDS]])
        if record.get("exc"):
            message += "\n" + str(record["exc"])
        return cls(service, message, str(record["level"]), str(record.get("t", "")))

    def markup(self, width: int = 11) -> str:
        style = LEVEL_STYLE.get(self.level, "dim")
        text = escape(self.text)
        head = f"[bold]{escape(self.service):>{width}}[/] "
        level = f"{self.level:<7} " if self.level else ""
        return head + (f"[{style}]{level}{text}[/]" if style else f"{level}{text}")


@dataclass
class Follower:
    """Reads what is added to the log files in a folder; a file that shrank (rotated) is read from
    its start again. ``from_end`` skips what was there when the follower was made."""

    folder: Path
    from_end: bool = True
    services: list[str] | None = None
    offsets: dict[Path, int] = field(default_factory=dict)
    partial: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.from_end:
            for path in self._files():
                self.offsets[path] = path.stat().st_size

    def _files(self) -> list[Path]:
        names = self.services or sorted(p.stem for p in self.folder.glob("*.log"))
        return [self.folder / f"{name}.log" for name in names if (self.folder / f"{name}.log").exists()]

    def new(self) -> Iterator[Line]:
        for path in self._files():
            size = path.stat().st_size
            start = self.offsets.get(path, 0)
            if size < start:  # rotated
                start = 0
            if size == start:
                continue
            with path.open("rb") as f:
                f.seek(start)
                chunk = f.read(size - start).decode("utf-8", "replace")
            self.offsets[path] = size
            text = self.partial.pop(path, "") + chunk
            *lines, rest = text.split("\n")
            if rest:
                self.partial[path] = rest
            for line in lines:
                if line.strip():
                    yield Line.parse(path.stem, line)

    def follow(self, stop: threading.Event, every_s: float = 0.3) -> Iterator[Line]:
        while not stop.is_set():
            yield from self.new()
            time.sleep(every_s)


def tail(folder: Path, services: list[str] | None, lines: int) -> list[Line]:
    """The last ``lines`` lines of the given services' logs (all when None), interleaved by time
    where lines carry one."""
    out: list[Line] = []
    for path in Follower(folder, from_end=False, services=services)._files():
        with path.open("rb") as f:
            start = max(0, path.stat().st_size - 400 * lines)  # enough bytes for ``lines`` lines
            f.seek(start)
            text = f.read().decode("utf-8", "replace").split("\n")[1 if start else 0 :]
        parsed = [Line.parse(path.stem, t) for t in text if t.strip()][-lines:]
        last = ""
        for line in parsed:  # a line without a time sorts after the one before it
            line.t = line.t or last
            last = line.t
        out.extend(parsed)
    return sorted(out, key=lambda line: line.t)[-lines:]
