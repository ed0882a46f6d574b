"""Speech segments as samples: the checks every stage that reads ``audio:segments`` makes."""

import numpy as np

from shared.schemas import AudioSegmentMessage, BadMessageError


def pcm_to_float(msg: AudioSegmentMessage, sample_rate: int, max_segment_s: float) -> np.ndarray:
    """Check a segment against the contract and return its samples as float32 in [-1, 1]."""
    if msg.sample_rate != sample_rate:
        raise BadMessageError(
            f"segment {msg.segment_id}: sample rate {msg.sample_rate} Hz, expected {sample_rate} Hz"
        )
    if not msg.audio:
        raise BadMessageError(f"segment {msg.segment_id}: audio is empty")
    if len(msg.audio) % 2:
        raise BadMessageError(f"segment {msg.segment_id}: {len(msg.audio)} bytes is not whole s16le samples")
    seconds = len(msg.audio) / 2 / msg.sample_rate
    if seconds > max_segment_s:
        raise BadMessageError(f"segment {msg.segment_id}: {seconds:.1f} s, over the {max_segment_s} s limit")
    if msg.t_end < msg.t_start:
        raise BadMessageError(f"segment {msg.segment_id}: t_end {msg.t_end} is before t_start {msg.t_start}")
    return np.frombuffer(msg.audio, dtype="<i2").astype(np.float32) / 32768.0
