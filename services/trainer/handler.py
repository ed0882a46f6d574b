"""Encounters in, training rows appended; a job started when enough new rows have come."""

import logging
import subprocess
import sys
from collections.abc import Sequence

import redis
from prometheus_client import Counter

from services.trainer.dataset import Dataset, rows_from
from services.trainer.settings import TrainerSettings
from shared.consumer import BatchedHandler, Outputs
from shared.schemas import EncounterMessage
from shared.streams import TrainerKeys

log = logging.getLogger(__name__)

ROWS = Counter("convo_trainer_rows_total", "Training rows appended to the dataset")
JOBS = Counter("convo_trainer_jobs_started_total", "Training jobs started by the row count")


class TrainerHandler(BatchedHandler):
    """Appends a batch of encounters' rows with one fsync, before the loop acks the batch.

    The job runs in a child process, so the consumer keeps reading while a model trains.
    """

    def __init__(self, client: redis.Redis, settings: TrainerSettings) -> None:
        self.redis = client
        self.settings = settings
        self.dataset = Dataset(settings.dataset)
        self.every_s = settings.trainer.check_every_s
        self.job: subprocess.Popen[bytes] | None = None

    def handle_batch(self, msgs: Sequence[EncounterMessage], /) -> list[Outputs | Exception]:
        added = self.dataset.append([row for msg in msgs for row in rows_from(msg)])
        if added:
            self.redis.incrby(TrainerKeys.NEW_ROWS, added)
            ROWS.inc(added)
        log.info("encounters=%d rows_added=%d", len(msgs), added)
        return [[] for _ in msgs]

    def tick(self) -> Outputs:
        if self.job is not None and self.job.poll() is None:
            return []
        new = int(self.redis.get(TrainerKeys.NEW_ROWS) or 0)
        if new >= self.settings.trainer.every_rows and not self.redis.exists(TrainerKeys.JOB_LOCK):
            log.info("%d new rows: starting a training job", new)
            self.job = subprocess.Popen([sys.executable, "-m", "services.trainer", "train"])
            JOBS.inc()
        return []

    def committed(self, outputs: Outputs, /) -> None:
        """Its ticks write nothing, so there is nothing to let go of."""
