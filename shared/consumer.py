"""The one consumer loop every service runs.

A service hands :class:`Consumer` a handler per input message type. The loop reads its
group's entries in batches, parses them into the stream's message model, calls the
handler and then, in one MULTI, writes the outputs, records the message as done and
acks it. Nothing is acked before its outputs are written, so a crashed replica's work
is reclaimed (XAUTOCLAIM) and redone; the "done" record makes the redo a no-op when the
outputs had already been written. See docs/ARCHITECTURE.md for the delivery rules.
"""

import enum
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import redis
from prometheus_client import Counter, Gauge, Histogram

from shared.commit import Acks, Committer, Work, refused
from shared.schemas import BadMessageError, StreamMessage, dead_letter, now
from shared.settings import ServiceSettings
from shared.streams import done_key, heartbeat_key

log = logging.getLogger(__name__)


def done_of(group: str, model: type[StreamMessage], key: str) -> str:
    """The idempotency record of one input: its stream and its id, since two streams a group
    reads may share ids (a segment's transcript and its voice both carry the segment id)."""
    return done_key(group, f"{model.STREAM}:{key}")


def done_id(group: str, msg: StreamMessage) -> str:
    """:func:`done_of` a parsed message."""
    return done_of(group, type(msg), msg.key)


PROCESSED = Counter("convo_processed_total", "Entries handled and acked", ["stage", "stream"])
FAILED = Counter("convo_failed_total", "Handler failures (left pending for a retry)", ["stage", "stream"])
DEAD = Counter("convo_dead_lettered_total", "Entries moved to the dead-letter stream", ["stage", "stream"])
DUPLICATES = Counter(
    "convo_duplicates_total",
    "Redelivered entries whose outputs already existed",
    ["stage", "stream"],
)
LATENCY = Histogram(
    "convo_handler_seconds",
    "Handler time per entry",
    ["stage", "stream"],
    buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG = Gauge("convo_lag_entries", "Entries in the stream not yet delivered to the group", ["stage", "stream"])

Outputs = Sequence[StreamMessage]


class Handler(Protocol):
    """A stage's work: one parsed message in, the messages to publish out."""

    def __call__(self, msg: Any, /) -> Outputs: ...


class Ticker(Protocol):
    """Work a stage does on a clock rather than on a message (closing conversations that went quiet).

    Its outputs are written once each, keyed by their own ids, however many replicas tick.
    ``committed(outputs)`` is called once they are written: the state they were made from may
    go then, and not before, so a crash in between loses nothing.
    """

    every_s: float

    def tick(self) -> Outputs: ...

    def committed(self, outputs: Outputs, /) -> None: ...


@runtime_checkable
class BatchHandler(Protocol):
    """A handler that is faster on several messages at once (GPU batching).

    ``handle_batch`` returns one result per message: its outputs, or the exception that
    message raised. The loop gives it every waiting message of a batch.
    """

    def __call__(self, msg: Any, /) -> Outputs: ...

    def handle_batch(self, msgs: Sequence[Any], /) -> list[Outputs | Exception]: ...


class BatchedHandler:
    """Base of :class:`BatchHandler` implementations: calling it handles one message as a batch of one."""

    def handle_batch(self, msgs: Sequence[Any], /) -> list[Outputs | Exception]:
        raise NotImplementedError

    def __call__(self, msg: Any, /) -> Outputs:
        [result] = self.handle_batch([msg])
        if isinstance(result, Exception):
            raise result
        return result


@dataclass
class Stats:
    """What one :meth:`Consumer.run` did; the same events the Prometheus counters count."""

    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    reclaimed: int = 0


class Outcome(enum.Enum):
    """Where an entry of a batch stands."""

    PENDING = "pending"  # not handled yet (or left for another consumer on SIGTERM)
    DONE = "ok"  # handled: its outputs are to be written, then it is acked
    DUPLICATE = "duplicate"  # its outputs were written before: acked only
    RETRY = "retry"  # failed; left pending for a redelivery
    DEAD = "dlq"  # to the dead-letter stream, then acked


ACKED = (Outcome.DONE, Outcome.DUPLICATE, Outcome.DEAD)
"""The outcomes of entries that are acknowledged once committed."""


@dataclass
class _Entry:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    deliveries: int
    msg: StreamMessage | None = None
    outcome: Outcome = Outcome.PENDING
    outputs: Outputs = ()
    error: str = ""
    started: float = field(default_factory=time.perf_counter)

    def dead(self, error: str) -> None:
        self.outcome, self.error = Outcome.DEAD, error


@dataclass(frozen=True)
class _Meters:
    processed: Any
    latency: Any


class Consumer:
    """Runs handlers over a consumer group on one or more streams.

    ``handlers`` maps an input message type (whose stream comes from the settings) to
    its handler. Handlers see parsed messages and return messages; they see no Redis.
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: ServiceSettings,
        group: str,
        handlers: Mapping[type[StreamMessage], Handler],
        stop: threading.Event | None = None,
        ticker: Ticker | None = None,
        committed: Callable[[Outputs], None] | None = None,
    ) -> None:
        self.redis = client
        self.ticker = ticker
        self.committed = committed
        """Told the handlers' outputs once they are written, as a ticker is told its own: the state
        they were made from may go then, and not before."""
        self._last_tick = 0.0
        self.settings = settings
        self.cfg = settings.consumer
        self.group = group
        self.name = settings.consumer_name
        self.stop = stop or threading.Event()
        self.stats = Stats()
        self._routes: dict[str, tuple[type[StreamMessage], Handler]] = {
            self.stream_of(model): (model, handler) for model, handler in handlers.items()
        }
        self._last_claim = 0.0
        self._last_beat = 0.0
        self._commit = Committer(client, self.cfg.dedupe_ttl_s)
        self._claim_from = dict.fromkeys(self._routes, "0-0")
        self._ahead: list[_Entry] = []
        """Entries read in the round trip of the last commit, handled next (:meth:`_commit_entries`)."""
        self._meters: dict[str, _Meters] = {}
        self._batch_handlers: dict[int, bool] = {}

    def stream_of(self, model: type[StreamMessage]) -> str:
        """The configured stream name of a message type."""
        return getattr(self.settings.streams, model.STREAM)

    def cap_of(self, stream_attr: str) -> int:
        return getattr(self.settings.caps, stream_attr)

    # -- lifecycle -------------------------------------------------------------------

    def run(self, burst: bool = False) -> Stats:
        """Consume until SIGTERM/SIGINT (or ``stop``); with ``burst``, until the group is drained."""
        self._install_signal_handlers()
        backoff = 0.1
        groups_ready = False
        while not self.stop.is_set():
            try:
                if not groups_ready:
                    self.ensure_groups()
                    groups_ready = True
                self._beat()
                self._tick()
                batch = self._claim() or self._take_ahead() or self._read(burst)
                if batch:
                    self._process(batch)
                elif burst and self._drained():
                    break
                elif burst:
                    self.stop.wait(0.05)
                backoff = 0.1
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # The stream or group was deleted under us: restarting recreates it at 0.
                    log.critical(
                        "group %s vanished (%s); exiting so the supervisor restarts",
                        self.group,
                        exc,
                    )
                    raise
                log.exception("redis error in group %s; backing off %.1fs", self.group, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.backoff_max_s)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.backoff_max_s)
                groups_ready = False
        self._hand_back()
        log.info("consumer %s/%s stopped: %s", self.group, self.name, self.stats)
        return self.stats

    def _tick(self) -> None:
        if self.ticker is None or time.monotonic() - self._last_tick < self.ticker.every_s:
            return
        self._last_tick = time.monotonic()
        try:
            outputs = list(self.ticker.tick())
        except redis.RedisError:
            raise
        except Exception:
            log.exception("group %s tick failed; trying again in %.0fs", self.group, self.ticker.every_s)
            return
        if outputs:
            work = [(done_id(self.group, out), [out]) for out in outputs]
            written = self._commit(self._work(work))
            log.info("group %s tick: %d outputs, %d new", self.group, len(outputs), sum(written))
        self.ticker.committed(outputs)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))

    def _on_signal(self, signum: int) -> None:
        log.info("signal %s: finishing the message in hand, then exiting", signal.Signals(signum).name)
        self.stop.set()

    def ensure_groups(self) -> None:
        """Create the group on every input stream from its start (``0``), keeping the backlog."""
        for stream in self._routes:
            try:
                self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _beat(self) -> None:
        t = time.monotonic()
        if t - self._last_beat < self.cfg.heartbeat_ttl_s / 3:
            return
        self._last_beat = t
        self.redis.set(heartbeat_key(self.group, self.name), repr(now()), ex=self.cfg.heartbeat_ttl_s)
        for stream in self._routes:
            for info in self.redis.xinfo_groups(stream):
                if info["name"].decode() == self.group and info.get("lag") is not None:
                    LAG.labels(self.group, stream).set(info["lag"])

    # -- reading ---------------------------------------------------------------------

    def _read(self, burst: bool) -> list[_Entry]:
        reply = self.redis.xreadgroup(
            self.group,
            self.name,
            {stream: ">" for stream in self._routes},
            count=self.cfg.batch_size,
            block=None if burst else self.cfg.block_ms,
        )
        return self._entries(reply)

    @staticmethod
    def _entries(reply: Any) -> list[_Entry]:
        return [
            _Entry(stream.decode(), entry_id, fields, deliveries=1)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]

    def _take_ahead(self) -> list[_Entry]:
        batch, self._ahead = self._ahead, []
        return batch

    def _hand_back(self) -> None:
        """Entries read ahead but never handled (SIGTERM came after the read): made claimable by
        any replica at once, as if never delivered (idle ``claim_idle_ms``, no delivery counted),
        rather than waiting out ``claim_idle_ms`` in this stopped consumer's pending list."""
        for stream in dict.fromkeys(e.stream for e in self._ahead):
            ids = [e.entry_id for e in self._ahead if e.stream == stream]
            try:
                self.redis.xclaim(
                    stream,
                    self.group,
                    self.name,
                    0,
                    ids,
                    idle=self.cfg.claim_idle_ms,
                    retrycount=0,
                    justid=True,
                )
            except redis.RedisError as exc:
                log.warning(
                    "group %s: %d entries read ahead wait for claim_idle_ms (%s)", self.group, len(ids), exc
                )
        self._ahead = []

    def _claim(self) -> list[_Entry]:
        """Take over entries idle longer than ``claim_idle_ms`` (a crashed or failing consumer's).

        Each call goes on from where the last one stopped, so a long pending list is worked
        through in turn rather than its head coming back each time.
        """
        t = time.monotonic()
        if t - self._last_claim < self.cfg.claim_every_s:
            return []
        self._last_claim = t
        batch: list[_Entry] = []
        for stream in self._routes:
            reply = self.redis.xautoclaim(
                stream,
                self.group,
                self.name,
                self.cfg.claim_idle_ms,
                self._claim_from[stream],
                count=self.cfg.batch_size,
            )
            self._claim_from[stream] = reply[0]
            entries = [(eid, fields) for eid, fields in reply[1] if fields is not None]
            if not entries:
                continue
            # The delivery count lives in the pending list; XAUTOCLAIM has just raised it.
            pipe = self.redis.pipeline(transaction=False)
            for eid, _ in entries:
                pipe.xpending_range(stream, self.group, min=eid, max=eid, count=1)
            for (eid, fields), info in zip(entries, pipe.execute(), strict=True):
                deliveries = info[0]["times_delivered"] if info else self.cfg.max_deliveries
                batch.append(_Entry(stream, eid, fields, deliveries=deliveries))
        if batch:
            self.stats.reclaimed += len(batch)
            log.info("group %s reclaimed %d idle entries", self.group, len(batch))
            self._last_claim = 0.0  # more may be waiting: claim again on the next turn
        return batch

    def _drained(self) -> bool:
        for stream in self._routes:
            for info in self.redis.xinfo_groups(stream):
                if info["name"].decode() != self.group:
                    continue
                if info["pending"]:
                    self._last_claim = 0.0  # retry-able entries wait: look for them on the next turn
                    return False
                if info.get("lag"):
                    return False
        return True

    # -- handling --------------------------------------------------------------------

    def _process(self, batch: list[_Entry]) -> None:
        """Each input stream's entries are handled and written in turn, in the order the handlers
        were given: a stage's first stream is never held back by the work of a later one (the
        transcriber's segments by live partials)."""
        for entry in batch:
            self._parse(entry)
        self._skip_done(batch)
        handled = False
        last = [s for s in self._routes if any(e.stream == s for e in batch)][-1]
        for stream, (_, handler) in self._routes.items():
            mine = [e for e in batch if e.stream == stream]
            todo = [e for e in mine if e.outcome is Outcome.PENDING]
            if todo and not (self.stop.is_set() and handled):
                self._handle(handler, todo)
                handled = handled or any(e.outcome is Outcome.DONE for e in todo)
            if mine:
                self._write(mine, read_ahead=stream == last)

    def _parse(self, entry: _Entry) -> None:
        model = self._routes[entry.stream][0]
        if entry.deliveries > self.cfg.max_deliveries:
            entry.dead(f"delivered {entry.deliveries} times without an ack (the consumer died handling it)")
            return
        try:
            entry.msg = model.from_fields(entry.fields, self.cfg.max_field_bytes)
        except BadMessageError as exc:
            entry.dead(str(exc))

    def _skip_done(self, batch: list[_Entry]) -> None:
        """Skip the handler for redelivered messages whose outputs were already written.

        Only redeliveries are looked up: for a first delivery the commit script finds any
        duplicate anyway, and the lookup would cost a round trip per batch.
        """
        redelivered = [
            e for e in batch if e.msg is not None and e.outcome is Outcome.PENDING and e.deliveries > 1
        ]
        if not redelivered:
            return
        keys = [done_id(self.group, e.msg) for e in redelivered]  # type: ignore[arg-type]
        for entry, mark in zip(redelivered, self.redis.mget(keys), strict=True):
            if mark is not None:
                entry.outcome = Outcome.DUPLICATE

    def _handle(self, handler: Handler, todo: list[_Entry]) -> None:
        if len(todo) > 1 and self._batches(handler) and not self.stop.is_set():
            try:
                results = handler.handle_batch([e.msg for e in todo])
            except Exception as exc:
                # One bad item fails a batched model call for all: find it by handling them one by one.
                log.warning("group %s: a batch of %d failed (%s); one by one now", self.group, len(todo), exc)
            else:
                for entry, result in zip(todo, results, strict=True):
                    self._record(entry, result)
                return
        for entry in todo:
            if self.stop.is_set() and entry is not todo[0]:
                break  # SIGTERM: the message in hand is finished; the rest stay pending for others
            entry.started = time.perf_counter()
            self._record(entry, self._guard(lambda e=entry: [handler(e.msg)], 1)[0])

    @staticmethod
    def _guard(call: Callable[[], list[Any]], n: int) -> list[Outputs | Exception]:
        try:
            return call()
        except Exception as exc:
            return [exc] * n

    def _record(self, entry: _Entry, result: Outputs | Exception) -> None:
        self._meter(entry.stream).latency.observe(time.perf_counter() - entry.started)
        if not isinstance(result, Exception):
            entry.outcome, entry.outputs = Outcome.DONE, list(result)
            return
        error = f"{type(result).__name__}: {result}"
        if isinstance(result, BadMessageError) or entry.deliveries >= self.cfg.max_deliveries:
            entry.dead(error)
            return
        self._retry(entry, error, result)

    def _retry(self, entry: _Entry, error: str, exc: Exception | None = None) -> None:
        """Leave the entry pending for a redelivery."""
        entry.outcome, entry.error = Outcome.RETRY, error
        log.warning(
            "stream=%s id=%s ms=%.0f outcome=retry deliveries=%d error=%s",
            entry.stream, entry.entry_id.decode(), self._ms(entry), entry.deliveries, error,
            exc_info=exc, extra=self._fields(entry, "retry"),
        )  # fmt: skip
        FAILED.labels(self.group, entry.stream).inc()
        self.stats.failed += 1

    # -- writing ---------------------------------------------------------------------

    def _write(self, batch: list[_Entry], read_ahead: bool = False) -> None:
        """Write outputs, done records, dead letters and acks in one script (one round trip);
        with ``read_ahead``, the next entries are read in the same round trip.

        The script writes and acks all of it or nothing. When Redis refuses it (an output
        stream this user may not write, out of memory), each entry is committed on its own,
        so that only the refused ones stay pending, to be retried and finally dead-lettered.
        """
        try:
            self._commit_entries(batch, read_ahead)
        except redis.ResponseError as exc:
            if not refused(exc):
                raise
            for entry in batch:
                self._commit_alone(entry)
        self._account([e for e in batch if e.outcome in ACKED])
        written = [o for e in batch if e.outcome in (Outcome.DONE, Outcome.DUPLICATE) for o in e.outputs]
        if self.committed is not None and written:
            self.committed(written)

    def _commit_entries(self, entries: list[_Entry], read_ahead: bool = False) -> None:
        fresh = [e for e in entries if e.outcome is Outcome.DONE]
        work = [(done_id(self.group, e.msg), e.outputs) for e in fresh]  # type: ignore[arg-type]
        letters = [
            ("", [(self.settings.streams.dlq, self.settings.caps.dlq, self._dead_letter(e))])
            for e in entries
            if e.outcome is Outcome.DEAD
        ]
        acks = [
            (stream, self.group, [e.entry_id for e in entries if e.stream == stream and e.outcome in ACKED])
            for stream in sorted({e.stream for e in entries if e.outcome in ACKED})
        ]
        if not (work or letters or acks):
            return
        if read_ahead and not self.stop.is_set() and not self._ahead:  # (a claimed batch came first)
            written = self._commit_and_read([*self._work(work), *letters], acks)
        else:
            written = self._commit([*self._work(work), *letters], acks)
        for entry, flag in zip(fresh, written, strict=False):
            if not flag:
                entry.outcome = Outcome.DUPLICATE

    def _commit_and_read(self, work: Work, acks: Acks) -> list[int]:
        """The commit, and the next read (not blocking) in the same round trip: a round trip per
        batch saved while a backlog lasts. What was read is kept whatever the commit's answer."""
        written, reply = self._commit.then_read(
            work, acks, self.group, self.name, {stream: ">" for stream in self._routes}, self.cfg.batch_size
        )
        if not isinstance(reply, Exception):
            self._ahead = self._entries(reply)
        if isinstance(written, Exception):
            raise written
        if isinstance(reply, Exception):
            raise reply
        return written

    def _commit_alone(self, entry: _Entry) -> None:
        """Commit one entry of a refused batch; if it is refused too, it stays pending, or after its
        last delivery goes to ``dlq`` with the refusal as its error."""
        try:
            self._commit_entries([entry])
            return
        except redis.ResponseError as exc:
            if not refused(exc) or entry.outcome is not Outcome.DONE:
                raise
            error = f"commit refused: {exc}"
        if entry.deliveries >= self.cfg.max_deliveries:
            entry.dead(error)
            self._commit_entries([entry])
            return
        self._retry(entry, error)

    def _work(self, work: list[tuple[str, Outputs]]) -> Work:
        """Per done key, the stream entries of the outputs it guards."""
        return [
            (key, [(self.stream_of(type(o)), self.cap_of(o.STREAM), o.to_fields()) for o in outputs])
            for key, outputs in work
        ]

    def _dead_letter(self, entry: _Entry) -> dict[str, bytes | str]:
        return dead_letter(
            entry.stream, entry.entry_id.decode(), entry.error or "", entry.fields,
            group=self.group, consumer=self.name, deliveries=str(entry.deliveries),
        )  # fmt: skip

    def _account(self, acked: list[_Entry]) -> None:
        for entry in acked:
            stream, eid = entry.stream, entry.entry_id.decode()
            if entry.outcome is Outcome.DUPLICATE:
                DUPLICATES.labels(self.group, stream).inc()
                self.stats.duplicates += 1
                log.info(
                    "stream=%s id=%s outcome=duplicate", stream, eid, extra=self._fields(entry, "duplicate")
                )
            elif entry.outcome is Outcome.DONE:
                self._meter(stream).processed.inc()
                self.stats.processed += 1
                if log.isEnabledFor(logging.INFO):  # the line's fields are built per entry: only if kept
                    n = len(entry.outputs)
                    log.info(
                        "stream=%s id=%s ms=%.0f outcome=ok outputs=%d",
                        stream, eid, self._ms(entry), n, extra=self._fields(entry, "ok", outputs=n),
                    )  # fmt: skip
            else:
                DEAD.labels(self.group, stream).inc()
                self.stats.dead_lettered += 1
                log.error(
                    "stream=%s id=%s outcome=dlq deliveries=%d error=%s",
                    stream, eid, entry.deliveries, entry.error,
                    extra=self._fields(entry, "dlq", error=entry.error),
                )  # fmt: skip

    def _batches(self, handler: Handler) -> bool:
        """Whether ``handler`` is a :class:`BatchHandler` (a protocol check is slow: asked once)."""
        known = self._batch_handlers.get(id(handler))
        if known is None:
            known = self._batch_handlers[id(handler)] = isinstance(handler, BatchHandler)
        return known

    def _meter(self, stream: str) -> "_Meters":
        """The per-entry metrics of one input stream (a label lookup per entry costs microseconds)."""
        meters = self._meters.get(stream)
        if meters is None:
            meters = self._meters[stream] = _Meters(
                PROCESSED.labels(self.group, stream), LATENCY.labels(self.group, stream)
            )
        return meters

    def _fields(self, entry: _Entry, outcome: str, **more: object) -> dict[str, object]:
        """The structured fields of a log line about one entry: ids and numbers, never its payload."""
        return {
            "group": self.group, "stream": entry.stream, "id": entry.entry_id.decode(), "outcome": outcome,
            "deliveries": entry.deliveries, "ms": round(self._ms(entry), 1), **more,
        }  # fmt: skip

    @staticmethod
    def _ms(entry: _Entry) -> float:
        return (time.perf_counter() - entry.started) * 1000
