"""Faults of the commit step and of batches: nothing acked unwritten, no good entry lost with a bad one."""

from collections.abc import Sequence

import redis

from shared.consumer import BatchedHandler, Consumer, Outputs
from shared.schemas import EncounterMessage, StreamMessage, TranscriptMessage
from shared.settings import ServiceSettings
from tests.shared.echo_worker import echo
from tests.shared.test_consumer import pending, publish, recalls


def without_recalls(r: redis.Redis) -> redis.Redis:
    """A client whose user may do everything but write ``recalls`` (it may still read it)."""
    r.acl_setuser(
        "no-recalls", enabled=True, nopass=True, categories=["+@all"],
        keys=["~transcripts", "~encounters", "~dlq", "~convo:*", "%R~recalls"],
    )  # fmt: skip
    kwargs = r.connection_pool.connection_kwargs
    return redis.Redis(host=kwargs["host"], port=kwargs["port"], username="no-recalls", password="x")


def recall_or_encounter(msg: TranscriptMessage) -> list[StreamMessage]:
    """``deny`` becomes a recall card (refused by the ACL), anything else an encounter."""
    if msg.text == "deny":
        return list(echo(msg))
    return [
        EncounterMessage(
            encounter_id=msg.segment_id,
            session="s",
            person_id="p1",
            t_start=0,
            t_end=1,
            transcript=msg.text,
            summary="",
            facts=[],
        )
    ]


def test_commit_refused_acks_nothing(r: redis.Redis, settings: ServiceSettings) -> None:
    publish(r, 1, text="deny")
    publish(r, 2, start=1, text="fine")
    consumer = Consumer(without_recalls(r), settings, "echo", {TranscriptMessage: recall_or_encounter})
    consumer.ensure_groups()
    consumer._process(consumer._read(burst=True))  # one batch of three
    assert pending(r) == 1 and r.xlen("recalls") == 0, "the refused entry is not acked"
    assert r.xlen("encounters") == 2, "the others of its batch are written and acked on their own"
    assert r.xlen("dlq") == 0
    stats = consumer.run(burst=True)  # redelivered up to max_deliveries, then a letter
    assert stats.dead_lettered == 1 and pending(r) == 0
    [(_, letter)] = r.xrange("dlq")
    assert letter[b"f.segment_id"] == b"seg-0" and b"recalls" in letter[b"error"]
    assert letter[b"deliveries"] == str(settings.consumer.max_deliveries).encode()
    assert r.xlen("recalls") == 0 and r.xlen("encounters") == 2, "nothing lost, nothing doubled"


class FussyBatch(BatchedHandler):
    """A batched model call that fails as a whole when one item of it is bad."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def handle_batch(self, msgs: Sequence[TranscriptMessage], /) -> list[Outputs | Exception]:
        self.calls.append(len(msgs))
        if any(m.text == "bad" for m in msgs):
            raise RuntimeError("the batch had a bad item")
        return [list(echo(m)) for m in msgs]


def test_batch_with_one_bad_item(r: redis.Redis, settings: ServiceSettings) -> None:
    publish(r, 3)
    publish(r, 1, start=3, text="bad")
    publish(r, 4, start=4)
    handler = FussyBatch()
    stats = Consumer(r, settings, "echo", {TranscriptMessage: handler}).run(burst=True)
    assert sorted(recalls(r)) == sorted(f"seg-{i}" for i in range(8) if i != 3), "the good ones come out"
    assert stats.dead_lettered == 1 and [f[b"f.segment_id"] for _, f in r.xrange("dlq")] == [b"seg-3"]
    assert handler.calls[0] == 8 and 1 in handler.calls, "tried as a batch, then item by item"
    assert pending(r) == 0
