"""The ``local`` extraction backend: the trainer's base model plus its newest adapter.

The rules backend finds the name, company and facts; the model writes the summary. It
follows ``trainer:runs`` and loads a newer adapter on the next conversation after one is
announced, so what the wearer's own conversations taught it reaches the cards.
"""

import logging
from typing import Any

import redis

from services.memory.extract import Extraction, RulesExtractor
from services.trainer.dataset import SUMMARISE, scrub
from services.trainer.settings import LoraSettings
from shared.schemas import AdapterMessage, BadMessageError
from shared.streams import StreamNames

log = logging.getLogger(__name__)


class LocalExtractor:
    def __init__(self, client: redis.Redis, streams: StreamNames, lora: LoraSettings) -> None:
        self.redis = client
        self.streams = streams
        self.lora = lora
        self.rules = RulesExtractor()
        self.model: Any = None
        self.tokenizer: Any = None
        self.version = 0

    def _newest(self) -> AdapterMessage | None:
        for _, fields in self.redis.xrevrange(self.streams.trainer_runs, count=10):
            try:
                return AdapterMessage.from_fields(fields)
            except BadMessageError as exc:
                log.error("ignoring an unreadable adapter announcement: %s", exc)
        return None

    def load(self) -> "LocalExtractor":
        """The base model now, and the newest adapter if there is one (again later when one comes)."""
        from peft import PeftModel

        from services.trainer.model import load_base

        if self.model is None:
            self.model, self.tokenizer = load_base(self.lora.model_copy(update={"quantize": "none"}))
        newest = self._newest()
        if newest is not None and newest.version > self.version:
            name = f"v{newest.version}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(newest.path, adapter_name=name)
                self.model.set_adapter(name)
            else:
                self.model = PeftModel.from_pretrained(self.model, newest.path, adapter_name=name)
            self.version = newest.version
            log.info("local backend: adapter v%d loaded from %s", newest.version, newest.path)
        return self

    def extract(self, transcript: str, wearer: str | None = None) -> Extraction:
        from services.trainer.model import generate

        self.load()
        found = self.rules.extract(transcript, wearer)
        summary = generate(self.model, self.tokenizer, SUMMARISE, scrub(transcript))
        return found.model_copy(update={"summary": summary[:1000] or found.summary, "backend": "local"})
