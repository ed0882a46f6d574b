"""One training job: export a snapshot, fine-tune, evaluate, register and announce the adapter.

One job runs at a time across every machine (a Redis lock, renewed each step); a job
started while another holds the lock exits at once.
"""

import logging
import time
from dataclasses import dataclass

import redis

from services.trainer.dataset import Dataset
from services.trainer.model import base_model_name, evaluate, load_base, prepare, train, with_lora
from services.trainer.registry import AdapterRegistry
from services.trainer.settings import TrainerSettings
from shared.schemas import AdapterMessage
from shared.streams import TrainerKeys

log = logging.getLogger(__name__)


class JobRunningError(RuntimeError):
    """Another training job holds the lock."""


class NoRowsError(ValueError):
    """Nothing to train on yet."""


@dataclass
class JobResult:
    adapter: AdapterMessage
    losses: list[float]
    skipped: dict[str, int]
    tokens_per_s: float


def run_job(client: redis.Redis, settings: TrainerSettings, progress: bool = True) -> JobResult:
    """Train one adapter on every row there is now. Raises :class:`JobRunningError` if one runs."""
    lock = client.lock(TrainerKeys.JOB_LOCK, timeout=settings.trainer.lock_ttl_s)
    if not lock.acquire(blocking=False):
        raise JobRunningError("a training job is running already")
    try:
        client.set(TrainerKeys.NEW_ROWS, 0)
        export = Dataset(settings.dataset).export()
        log.info("job: %d train rows, %d eval rows in %s", len(export.train), len(export.eval), export.dir)
        model, tokenizer = load_base(settings.lora)
        limit = settings.dataset.max_input_tokens
        train_set, eval_set = prepare(export.train, tokenizer, limit), prepare(export.eval, tokenizer, limit)
        skipped = dict(train_set.skipped + eval_set.skipped)
        if skipped:
            log.warning("job: skipped rows %s", skipped)
        if not train_set.examples:
            raise NoRowsError(f"no usable training rows (skipped {skipped})")
        pad = tokenizer.pad_token_id
        before = evaluate(model, eval_set.examples, pad)
        model = with_lora(model, settings.lora)
        result = train(model, train_set.examples, settings.lora, pad, progress, on_step=lock.reacquire)
        after = evaluate(model, eval_set.examples, pad)
        registry = AdapterRegistry(client)
        version = registry.next_version()
        path = settings.trainer.adapters_dir / f"v{version}"
        model.save_pretrained(path)
        msg = AdapterMessage(
            version=version, base_model=base_model_name(settings.lora), path=str(path),
            rows=len(train_set.examples), eval_loss_before=before, eval_loss_after=after, t=time.time(),
        )  # fmt: skip
        registry.register(msg, {r.person_id for r in export.train})
        client.xadd(
            settings.streams.trainer_runs,
            msg.to_fields(),
            maxlen=settings.caps.trainer_runs,
            approximate=True,
        )
        log.info(
            "job: adapter v%d from %d rows; eval loss %.3f -> %.3f; %.0f tokens/s",
            version, msg.rows, before, after, result.tokens / result.seconds,
        )  # fmt: skip
        return JobResult(msg, result.losses, skipped, result.tokens / result.seconds)
    finally:
        lock.release()
