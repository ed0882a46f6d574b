"""The words memory says a session's speech is likely to hold: the names, companies and topics of
the people in view (``MemoryKeys.context``). Read per segment; a missing key is no context."""

import json

import redis

from shared.streams import MemoryKeys


class SessionContext:
    """Reads the context memory keeps for each session."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def words(self, session: str) -> list[str]:
        raw = self.redis.get(MemoryKeys.context(session))
        return [str(w) for w in json.loads(raw)] if raw else []
