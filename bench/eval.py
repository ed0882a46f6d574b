"""The identity scorecard on the public scenes (tests/scenes/), replayed at real-time speed.

Each scene goes through capture replay, the transcriber (tiny.en), the face stage (buffalo_s)
and memory, on a private redis-server; see services/evaluation.py. Real-time replay makes the
time from a face's first frame to its card meaningful. Nothing else should run meanwhile.
"""

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report
from services.evaluation import evaluate

SCENES = Path(__file__).resolve().parents[1] / "tests" / "scenes"


def main() -> None:
    logging.disable(logging.WARNING)
    card = evaluate(SCENES, realtime=True)
    for score in card.scores:
        print(
            f"{score.scene}: identity {score.identity} attribution {score.attribution}"
            f" persons added {score.persons_added}"
            f" s to card {score.s_to_card}{' (by voice, from their line)' if score.by_voice else ''}"
            f" me/them {score.me_them[0]}/{score.me_them[1]} {'; '.join(score.notes)}"
        )
    f = card.figures()
    report(
        "eval", identity_accuracy=f["identity_accuracy"], attribution_accuracy=f["attribution_accuracy"],
        name_recall=f["name_recall"], company_recall=f["company_recall"], wer=f["wer"],
        me_them_accuracy=f["me_them_accuracy"],
        crowd_persons_added=f["crowd_persons_added"], p50_s_to_card=f["p50_s_to_card"],
        p95_s_to_card=f["p95_s_to_card"], max_s_to_voice_card=f["max_s_to_voice_card"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
