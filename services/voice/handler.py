"""``audio:segments`` in, ``voices`` out: one speaker embedding per segment."""

import logging

import numpy as np
from prometheus_client import Counter

from services.voice.model import NAME, VoiceEncoderModel
from services.voice.settings import VoiceModelSettings
from shared.audio import pcm_to_float
from shared.schemas import AudioSegmentMessage, BadMessageError, VoiceMessage, embedding_to_bytes

log = logging.getLogger(__name__)

EMBEDDED = Counter("convo_voice_segments_total", "Segments given a speaker embedding")


class VoiceHandler:
    def __init__(self, settings: VoiceModelSettings, model: VoiceEncoderModel | None = None) -> None:
        self.settings = settings
        self.model = model or VoiceEncoderModel(settings)

    def load(self) -> "VoiceHandler":
        self.model.load()
        return self

    def __call__(self, msg: AudioSegmentMessage) -> list[VoiceMessage]:
        audio = pcm_to_float(msg, self.settings.sample_rate, self.settings.max_segment_s)
        if not np.all(np.isfinite(audio)):  # cannot happen for s16le, but the check is cheap
            raise BadMessageError(f"segment {msg.segment_id}: audio holds NaN")
        vector, speech_s = self.model.embed(audio)
        if not len(vector):
            raise BadMessageError(
                f"segment {msg.segment_id}: {speech_s:.2f} s of speech once silences are cut, "
                f"under {self.settings.min_speech_s} s: no voice to embed"
            )
        EMBEDDED.inc()
        log.debug("segment=%s speech_s=%.2f", msg.segment_id, speech_s)
        return [
            VoiceMessage(
                segment_id=msg.segment_id, session=msg.session, t_start=msg.t_start, t_end=msg.t_end,
                embedding=embedding_to_bytes(vector), speech_s=round(speech_s, 3), model=NAME,
            )
        ]  # fmt: skip
