"""Structured logs: JSON lines with ids, never payloads."""

import json
import logging
import sys

import numpy as np
import pytest

from shared.logs import JsonFormatter


def record(msg: str, *args: object, **extra: object) -> dict:
    rec = logging.LogRecord("convo.test", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return json.loads(JsonFormatter().format(rec))


def test_a_line_is_one_json_object_with_its_ids() -> None:
    out = record("stream=%s id=%s outcome=ok", "transcripts", "1-0", stream="transcripts", id="1-0", ms=3.5)
    assert out["msg"] == "stream=transcripts id=1-0 outcome=ok" and out["level"] == "WARNING"
    assert (out["stream"], out["id"], out["ms"]) == ("transcripts", "1-0", 3.5) and out["t"].endswith(
        "+00:00"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(5000), "<5004 bytes>"),
        (np.ones(512, np.float32), "<array (512,) float32>"),
        ("I'm Sarah Chen from Stripe. " * 20, "<560 chars>"),
        ([b"abc", 1], ["<3 bytes>", 1]),
    ],
)
def test_payloads_in_extra_fields_are_written_as_their_size(value: object, shown: object) -> None:
    assert record("x", payload=value)["payload"] == shown


def test_an_exception_is_kept_as_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("convo.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]
