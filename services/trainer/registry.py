"""The adapter registry in Redis: every trained adapter, what it scored, and whom it learned from."""

import json
from typing import Any

import redis

from services.trainer.dataset import person_hash
from shared.schemas import AdapterMessage
from shared.streams import TrainerKeys


class AdapterRegistry:
    """Adapters in Redis: what each was trained on and how it scored. Persons only as hashes."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def register(self, msg: AdapterMessage, persons: set[str]) -> None:
        fields = msg.to_fields() | {
            "persons": json.dumps(sorted(person_hash(p) for p in persons)),
            "forgotten": "0",
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(TrainerKeys.adapter(msg.version), mapping=fields)
            pipe.zadd(TrainerKeys.ADAPTERS, {str(msg.version): msg.version})
            pipe.execute()

    def next_version(self) -> int:
        newest = self.redis.zrevrange(TrainerKeys.ADAPTERS, 0, 0)
        return int(newest[0]) + 1 if newest else 1

    def list(self) -> list[dict[str, Any]]:
        out = []
        for version in self.redis.zrevrange(TrainerKeys.ADAPTERS, 0, -1):
            raw = self.redis.hgetall(TrainerKeys.adapter(int(version)))
            entry: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
            entry["persons"] = len(json.loads(entry.get("persons", "[]")))
            entry["forgotten"] = entry.get("forgotten") == "1"
            out.append(entry)
        return out

    def mark_forgotten(self, pid: str) -> int:
        """Flag every adapter trained on ``pid`` and drop the person from its list; returns how many."""
        marked = 0
        for version in self.redis.zrange(TrainerKeys.ADAPTERS, 0, -1):
            key = TrainerKeys.adapter(int(version))
            persons = json.loads(self.redis.hget(key, "persons") or b"[]")
            if person_hash(pid) in persons:
                persons.remove(person_hash(pid))
                self.redis.hset(key, mapping={"persons": json.dumps(persons), "forgotten": "1"})
                marked += 1
        return marked
