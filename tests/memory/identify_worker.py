"""One memory replica for the concurrency test: identify one face at an agreed moment."""

import sys
import time

import numpy as np
import redis

from services.memory.person_store import PersonStore
from services.memory.settings import MatchSettings

if __name__ == "__main__":
    url, embedding_path, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = PersonStore(redis.Redis.from_url(url), MatchSettings())
    vector = np.load(embedding_path)
    store.refresh()  # both replicas have an up-to-date (empty) index before the race
    time.sleep(max(start_at - time.time(), 0))
    print(store.identify(vector).person_id, flush=True)
