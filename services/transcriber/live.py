"""Live words while someone speaks: partial audio in, words that do not flicker out.

Capture sends an utterance's audio so far every ``partial_every_s`` while it goes on. Each is
decoded cheaply (greedy, with the session's hotwords), and a word is *stable* once two decodes
in a row agree on it and on every word before it (LocalAgreement-2, as in whisper_streaming);
stable words never change again, the rest are *pending*. Only the newest partial of an
utterance is decoded: older ones in the same batch, ones whose segment is already transcribed,
and stale ones are dropped, so live words never hold up a segment's transcript.
"""

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from prometheus_client import Counter

from services.transcriber.model import WhisperSpeechModel, plain_words
from services.transcriber.settings import WhisperSettings
from shared.audio import pcm_to_float
from shared.consumer import BatchedHandler
from shared.schemas import BadMessageError, PartialSegmentMessage, PartialTranscriptMessage

log = logging.getLogger(__name__)
LIVE = Counter("convo_transcriber_partials_total", "Partial segments, by outcome", ["outcome"])
KEEP = 512
"""Utterances whose live state is remembered (a replica serves a few sessions at a time)."""


def agree(committed: list[str], previous: list[str], now: list[str]) -> list[str]:
    """The stable words after a new decode: the committed ones, extended by the longest prefix
    that the previous and the new decode share, once that prefix starts with them."""
    n = 0
    while n < min(len(previous), len(now)) and plain_words(previous[n]) == plain_words(now[n]):
        n += 1
    shared = now[:n]
    starts = [plain_words(w) for w in shared[: len(committed)]] == [plain_words(w) for w in committed]
    return shared if len(shared) > len(committed) and starts else committed


class LiveWords(BatchedHandler):
    """``audio:partials`` in, ``transcripts:partial`` out."""

    def __init__(
        self, settings: WhisperSettings, model: WhisperSpeechModel,
        hotwords: Callable[[str], str | None] | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.model = model
        self.hotwords = hotwords
        """The session's hotwords (the transcriber's :meth:`TranscriberHandler.hotwords`)."""
        self.heard: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
        """Per segment: the last decode's words, and the stable ones."""
        self.finished: OrderedDict[str, None] = OrderedDict()

    def finish(self, segment_ids: Sequence[str]) -> None:
        """These segments are transcribed: their live words are over."""
        for sid in segment_ids:
            self.heard.pop(sid, None)
            self.finished[sid] = None
        while len(self.finished) > KEEP:
            self.finished.popitem(last=False)

    def handle_batch(
        self, msgs: Sequence[PartialSegmentMessage]
    ) -> list[list[PartialTranscriptMessage] | Exception]:
        newest = {m.segment_id: m for m in sorted(msgs, key=lambda m: m.t_end)}
        results: list[list[PartialTranscriptMessage] | Exception] = []
        for msg in msgs:
            try:
                results.append(self._one(msg, newest[msg.segment_id] is msg))
            except BadMessageError as exc:
                results.append(exc)
        return results

    def _one(self, msg: PartialSegmentMessage, newest: bool) -> list[PartialTranscriptMessage]:
        audio = pcm_to_float(msg, self.settings.sample_rate, self.settings.max_segment_s)
        outcome = (
            "superseded" if not newest
            else "after its segment" if msg.segment_id in self.finished
            else "stale" if time.time() - msg.t_end > self.settings.live_stale_s
            else ""
        )  # fmt: skip
        if outcome:
            LIVE.labels(outcome).inc()
            return []
        words = self.model.quick(audio, self.hotwords(msg.session) if self.hotwords else None).text.split()
        previous, stable = self.heard.pop(msg.segment_id, ([], []))
        stable = agree(stable, previous, words)
        self.heard[msg.segment_id] = (words, stable)
        while len(self.heard) > KEEP:
            self.heard.popitem(last=False)
        LIVE.labels("decoded").inc()
        return [
            PartialTranscriptMessage(
                partial_id=msg.partial_id, segment_id=msg.segment_id, session=msg.session,
                t_start=msg.t_start, t_end=msg.t_end, stable=" ".join(stable),
                pending=" ".join(words[len(stable) :]), model=self.model.name,
            )
        ]  # fmt: skip
