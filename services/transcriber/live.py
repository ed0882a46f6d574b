"""Live words while someone speaks: partial audio in, words that do not flicker out.

Capture sends an utterance's audio so far every ``partial_every_s`` while it goes on. Each is
decoded cheaply (greedy, with the session's hotwords), and a word is *stable* once two decodes
in a row agree on it and on every word before it (LocalAgreement-2, as in whisper_streaming);
stable words never change again, the rest are *pending*. Only the newest partial of an
utterance is decoded: older ones in the same batch, ones whose segment is already transcribed,
and stale ones are dropped, so live words never hold up a segment's transcript.

The agreement state of an utterance (the last decode's words, the stable ones) is kept in Redis,
not in the replica: consecutive partials of one utterance go to whichever transcriber replica
reads them first, and stable words must stay stable across them. A decode that finishes after a
newer partial's (two replicas on one utterance at once) is dropped rather than written over it.
"""

import json
import logging
import time
from collections.abc import Callable, Sequence

import redis
from prometheus_client import Counter

from services.transcriber.model import WhisperSpeechModel, plain_words
from services.transcriber.settings import WhisperSettings
from shared.audio import pcm_to_float
from shared.consumer import BatchedHandler, done_of
from shared.schemas import (
    AudioSegmentMessage,
    BadMessageError,
    PartialSegmentMessage,
    PartialTranscriptMessage,
)
from shared.streams import Groups, TranscriberKeys

log = logging.getLogger(__name__)
LIVE = Counter("convo_transcriber_partials_total", "Partial segments, by outcome", ["outcome"])
KEEP_S = 120
"""How long an utterance's live state outlives its last partial (an utterance is at most 30 s)."""
# Write the state only over an older one (or one that cannot be read): a slower replica's
# decode of an earlier partial must not take the stable words of a later one back.
NEWER_SCRIPT = """
local now = redis.call('GET', KEYS[1])
if now then
  local ok, kept = pcall(cjson.decode, now)
  local t = ok and type(kept) == 'table' and tonumber(kept['t'])
  if t and t >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


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
        self, settings: WhisperSettings, model: WhisperSpeechModel, client: redis.Redis,
        hotwords: Callable[[str], str | None] | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.model = model
        self.redis = client
        self.hotwords = hotwords
        """The session's hotwords (the transcriber's :meth:`TranscriberHandler.hotwords`)."""
        self._newer = client.register_script(NEWER_SCRIPT)

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
            else "stale" if time.time() - msg.t_end > self.settings.live_stale_s
            else ""
        )  # fmt: skip
        if not outcome:
            done, previous, stable = self._state(msg.segment_id)
            outcome = "after its segment" if done else ""
        if outcome:
            LIVE.labels(outcome).inc()
            return []
        words = self.model.quick(audio, self.hotwords(msg.session) if self.hotwords else None).text.split()
        stable = agree(stable, previous, words)
        kept = {"t": msg.t_end, "words": words, "stable": stable}
        if not self._newer(
            keys=[TranscriberKeys.live(msg.segment_id)], args=[json.dumps(kept), msg.t_end, KEEP_S]
        ):
            LIVE.labels("superseded").inc()  # a newer partial was decoded meanwhile, by another replica
            return []
        LIVE.labels("decoded").inc()
        return [
            PartialTranscriptMessage(
                partial_id=msg.partial_id, segment_id=msg.segment_id, session=msg.session,
                t_start=msg.t_start, t_end=msg.t_end, stable=" ".join(stable),
                pending=" ".join(words[len(stable) :]), model=self.model.name,
            )
        ]  # fmt: skip

    def _state(self, segment_id: str) -> tuple[bool, list[str], list[str]]:
        """Whether the utterance's transcript is written (by any replica), and its live state: the
        last decode's words and the stable ones (none when it cannot be read: the live words start
        over, and this decode writes a good state)."""
        with self.redis.pipeline(transaction=False) as pipe:
            # the done record of its segment: its transcript is written
            pipe.exists(done_of(Groups.TRANSCRIBER, AudioSegmentMessage, segment_id))
            pipe.get(TranscriberKeys.live(segment_id))
            done, raw = pipe.execute()
        try:
            state = json.loads(raw) if raw else {}
            previous, stable = ([str(w) for w in state.get(k, [])] for k in ("words", "stable"))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("segment=%s live state unreadable (%s); starting it over", segment_id, exc)
            return bool(done), [], []
        return bool(done), previous, stable
