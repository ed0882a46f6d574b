"""A consumer process for the loop's crash tests: turns transcripts into recall cards.

It runs the real shared loop; only the handler is this file's. ``ECHO_DELAY_S`` slows
each message so a test can kill or stop the process mid-batch, and a transcript whose
text is ``poison`` always raises.
"""

import os
import sys
import time

from shared.consumer import Consumer
from shared.logs import configure_logging
from shared.runtime import connect
from shared.schemas import RecallMessage, TranscriptMessage
from shared.settings import ServiceSettings

DELAY_S = float(os.environ.get("ECHO_DELAY_S", "0"))


def echo(msg: TranscriptMessage) -> list[RecallMessage]:
    if msg.text == "poison":
        raise RuntimeError("poison entry")
    print(f"handling {msg.segment_id}", flush=True)
    time.sleep(DELAY_S)
    return [
        RecallMessage(
            recall_id=msg.segment_id,
            person_id="p1",
            name=msg.text,
            summary="",
            similarity=1.0,
            t=msg.t_end,
        )
    ]


if __name__ == "__main__":
    settings = ServiceSettings()
    configure_logging("INFO")
    stats = Consumer(connect(settings, "echo"), settings, "echo", {TranscriptMessage: echo}).run(
        burst="--burst" in sys.argv
    )
    print(f"stats {stats}", flush=True)
