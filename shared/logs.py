"""Structured logs: one JSON object per line on stderr, with the ids a line is about.

Payloads never go into a log: a field holding bytes, an array or a long string is written
as its size only, so that an embedding, a transcript or an image cannot leak through
``extra=``. Messages name entries by id (``stream``, ``id``, ``segment``, ``person``).
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
MAX_VALUE_CHARS = 200


def _safe(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<array {tuple(value.shape)} {value.dtype}>"
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return f"<{len(value)} chars>"
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return _safe(str(value))


class JsonFormatter(logging.Formatter):
    """``{"t", "level", "logger", "msg", ...extra fields, "exc"}``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "t": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = _safe(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "json") -> None:
    """Log to stderr: ``json`` lines (the default), or ``text`` for reading in a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
