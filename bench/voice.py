"""Speaker embeddings: how well resemblyzer's GE2E tells speakers apart here, what the voice
stage costs over the raw model, and how often the wearer's lines are marked right.

- EER: equal error rate of same-speaker against different-speaker pairs, on the real recorded
  speech (two readers, pocketsphinx-testdata) and on espeak-ng voices, by cosine score.
- ratio_pipeline_vs_raw: the same segments through Redis and the consumer loop (voice stage)
  against ``embed`` called on them directly, in one run.
- me_them_accuracy: the wearer enrolled from two of their recordings; each of the other
  recordings of both readers is marked me or them at memory's threshold.
- identity and attribution on the public eval scenes (tests/scenes/, fast replay, cards read
  from the page) with the voice stage against without it.
Nothing else should run meanwhile.
"""

import itertools
import logging
import sys
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bench_settings, private_redis, report
from services.evaluation import evaluate
from services.memory.settings import VoiceMatchSettings
from services.voice.handler import VoiceHandler
from services.voice.model import VoiceEncoderModel
from services.voice.samples import recorded, synthetic
from services.voice.settings import VoiceModelSettings
from shared.consumer import Consumer
from shared.schemas import AudioSegmentMessage

ROUNDS = 3
SCENES = Path(__file__).resolve().parents[1] / "tests" / "scenes"


def eer(by_speaker: dict[str, list[np.ndarray]]) -> float:
    """The error rate where false accepts equal false rejects, over every pair."""
    pairs = [
        (float(a @ b), p == q)
        for (p, a), (q, b) in itertools.combinations([(k, v) for k, vs in by_speaker.items() for v in vs], 2)
    ]
    best = 1.0
    for threshold in sorted({s for s, _ in pairs}):
        far = np.mean([s >= threshold for s, same in pairs if not same])
        frr = np.mean([s < threshold for s, same in pairs if same])
        best = min(best, max(far, frr))
    return float(best)


def segment(audio: np.ndarray, i: int) -> AudioSegmentMessage:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return AudioSegmentMessage(
        segment_id=f"seg-{i}", session="bench", t_start=1e9, t_end=1e9 + len(audio) / 16000,
        sample_rate=16000, audio=pcm,
    )  # fmt: skip


def main() -> None:
    logging.disable(logging.INFO)
    model = VoiceEncoderModel(VoiceModelSettings()).load()
    real, fake = recorded(), synthetic()
    vectors = {k: [model.embed(a)[0] for a, _ in v] for k, v in real.items()}
    eer_real = eer(vectors)
    eer_espeak = eer({k: [model.embed(a)[0] for a, _ in v] for k, v in fake.items()})

    threshold = VoiceMatchSettings().wearer_threshold
    right = total = 0
    for wearer in vectors:
        views = np.stack(vectors[wearer][:2])
        for who, vs in vectors.items():
            for v in vs[2:] if who == wearer else vs:
                right += (float((views @ v).max()) >= threshold) == (who == wearer)
                total += 1

    audios = [a for lines in real.values() for a, _ in lines] * ROUNDS
    start = time.perf_counter()
    for audio in audios:
        model.embed(audio)
    raw_s = time.perf_counter() - start
    with private_redis() as server:
        r = redis.Redis.from_url(server.url)
        for i, audio in enumerate(audios):
            r.xadd("audio:segments", segment(audio, i).to_fields())
        handler = VoiceHandler(model.settings, model)
        start = time.perf_counter()
        stats = Consumer(
            r, bench_settings(server, batch_size=8), "voice", {AudioSegmentMessage: handler}
        ).run(burst=True)
        loop_s = time.perf_counter() - start
        assert stats.processed == len(audios) and r.xlen("voices") == len(audios), stats
    speech_s = sum(len(a) for a in audios) / 16000
    n = len(audios)
    print(
        f"EER recorded {eer_real:.3f} ({sum(map(len, vectors.values()))} utterances, 2 readers), "
        f"espeak {eer_espeak:.3f} ({len(fake)} voices); me/them {right}/{total} at {threshold}; "
        f"{n} segments ({speech_s:.0f} s of speech): raw {raw_s / n * 1000:.1f} ms, "
        f"pipeline {loop_s / n * 1000:.1f} ms per segment"
    )
    with_voice, without = (evaluate(SCENES, voice=v).figures() for v in (True, False))
    print(
        f"eval scenes with voice / without: identity {with_voice['identity_accuracy']:.3f} / "
        f"{without['identity_accuracy']:.3f}, attribution {with_voice['attribution_accuracy']:.3f} / "
        f"{without['attribution_accuracy']:.3f}"
    )
    report(
        "voice", eer=eer_real, eer_espeak=eer_espeak, ratio_pipeline_vs_raw=raw_s / loop_s,
        me_them_accuracy=right / total, ms_per_segment=loop_s / n * 1000,
        identity_with_voice=with_voice["identity_accuracy"], identity_without=without["identity_accuracy"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
