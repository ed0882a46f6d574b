"""A real LoRA run on SmolLM2-135M-Instruct (the packaged GGUF) on the CPU, and the local backend
that uses its adapter."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import torch

from services.memory.local import LocalExtractor
from services.trainer.dataset import SUMMARISE, Dataset, rows_from
from services.trainer.handler import TrainerHandler
from services.trainer.job import JobRunningError, run_job
from services.trainer.model import base_checkpoint, packaged_smollm2, prepare, prompt
from services.trainer.registry import AdapterRegistry
from services.trainer.settings import TrainerSettings
from shared.schemas import AdapterMessage
from shared.streams import TrainerKeys
from tests.trainer.conftest import encounter


def fill(settings: TrainerSettings) -> None:
    rows = [row for i in range(30) for row in rows_from(encounter(i))]
    empty = encounter(90, summary="", name="", company="", topics=[], facts=[])  # nothing learned
    # About 100k tokens: more than a stream entry may carry, so planted in the file directly.
    huge = [row.model_copy(update={"input": "word " * 100_000}) for row in rows_from(encounter(91))]
    Dataset(settings.dataset).append(rows + rows_from(empty) + huge)


def test_the_packaged_gguf_is_converted_once_to_the_same_model(model_cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = base_checkpoint(model_cache)
    written = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert base_checkpoint(model_cache) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == written, "converted once"
    assert [p.name for p in model_cache.iterdir()] == [checkpoint.name], "no work directory is left"

    folder, gguf = packaged_smollm2()
    tokenizers = [
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf),
        AutoTokenizer.from_pretrained(checkpoint),
    ]
    models = [
        AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32),
        AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32),
    ]
    texts = [prompt(t, SUMMARISE, encounter(0).transcript) for t in tokenizers]
    assert texts[0] == texts[1], "same chat template"
    ids = [t(texts[0], return_tensors="pt")["input_ids"] for t in tokenizers]
    assert torch.equal(ids[0], ids[1]), "same tokens"
    with torch.no_grad():
        logits = [m(input_ids=ids[0]).logits for m in models]
    assert torch.equal(logits[0], logits[1]), "same weights"


# 24 optimiser steps of a 135M model: about two minutes on a 2-core CPU, more on a busy one.
@pytest.mark.timeout(900)
def test_lora_job_trains_registers_announces_and_the_local_backend_uses_it(
    r: redis.Redis, trainer_settings: TrainerSettings
) -> None:
    fill(trainer_settings)
    result = run_job(r, trainer_settings, progress=False)

    losses = result.losses
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 * 0.8, f"training loss did not fall: {losses}"
    a = result.adapter
    assert math.isfinite(a.eval_loss_before) and math.isfinite(a.eval_loss_after)
    assert result.skipped == {"empty output": 2, "too long": 2}
    print(
        f"eval loss {a.eval_loss_before:.3f} -> {a.eval_loss_after:.3f}; {result.tokens_per_s:.0f} tokens/s"
    )
    assert (trainer_settings.trainer.adapters_dir / "v1" / "adapter_model.safetensors").is_file()
    [entry] = AdapterRegistry(r).list()
    assert entry["version"] == "1" and entry["persons"] == 4 and not entry["forgotten"]
    [(_, fields)] = r.xrange("trainer:runs")
    assert AdapterMessage.from_fields(fields) == a

    local = LocalExtractor(r, trainer_settings.streams, trainer_settings.lora).load()
    assert local.version == 1
    model, tokenizer = local.model, local.tokenizer
    ids = tokenizer(prompt(tokenizer, SUMMARISE, encounter(0).transcript), return_tensors="pt")
    with torch.no_grad():
        tuned = model(**ids).logits
        with model.disable_adapter():
            base = model(**ids).logits
    assert (tuned - base).abs().max() > 0.1, "the adapter changes the model's output"
    out = local.extract("Hi, I'm Sarah Chen from Stripe. I work on rate limits.", wearer="Alex")
    assert out.backend == "local" and out.name == "Sarah Chen" and out.summary
    print(f"local summary: {out.summary!r}")

    # A newer adapter is announced: the backend picks it up on its next conversation.
    r.xadd("trainer:runs", a.model_copy(update={"version": 2}).to_fields())
    local.extract("Hello again.")
    assert local.version == 2


def test_one_job_at_a_time(r: redis.Redis, trainer_settings: TrainerSettings) -> None:
    lock = r.lock(TrainerKeys.JOB_LOCK, timeout=60)
    assert lock.acquire(blocking=False)
    with pytest.raises(JobRunningError):
        run_job(r, trainer_settings, progress=False)
    lock.release()


def test_bad_rows_never_crash_the_job_and_nothing_usable_is_a_clear_error(
    r: redis.Redis, trainer_settings: TrainerSettings
) -> None:
    empty = encounter(1, summary="", name="", company="", topics=[], facts=[])
    Dataset(trainer_settings.dataset).append(rows_from(empty))
    with pytest.raises(ValueError, match="no usable training rows"):
        run_job(r, trainer_settings, progress=False)
    assert not r.exists(TrainerKeys.JOB_LOCK), "the lock is released"


def test_the_service_starts_a_job_once_enough_rows_came(
    r: redis.Redis, trainer_settings: TrainerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "CONVO_REDIS_URL": trainer_settings.redis_url, "CONVO_LORA__STEPS": "2",
        "CONVO_DATASET__DIR": str(trainer_settings.dataset.dir),
        "CONVO_LORA__CACHE_DIR": str(trainer_settings.lora.cache_dir),
        "CONVO_TRAINER__ADAPTERS_DIR": str(trainer_settings.trainer.adapters_dir),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    handler = TrainerHandler(r, trainer_settings)
    handler.handle_batch([encounter(i) for i in range(4)])  # 8 rows: under every_rows=10
    handler.tick()
    assert handler.job is None
    handler.handle_batch([encounter(i) for i in range(4, 12)])
    handler.tick()
    assert handler.job is not None
    handler.tick()  # while it runs, no second one
    assert handler.job.wait(300) == 0
    assert [e["version"] for e in AdapterRegistry(r).list()] == ["1"]
    assert int(r.get(TrainerKeys.NEW_ROWS) or 0) == 0


def test_prepare_counts_what_it_skips(trainer_settings: TrainerSettings) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_checkpoint(trainer_settings.lora.cache_dir))
    rows = rows_from(encounter(0)) + rows_from(encounter(1, transcript="word " * 300))
    prepared = prepare(rows, tokenizer, max_tokens=200)
    assert len(prepared.examples) == 2 and prepared.skipped == {"too long": 2}


def test_forget_and_the_overlay_do_not_load_the_training_stack() -> None:
    """The people admin (CLI, overlay) touches the dataset, but never imports torch."""
    check = "import sys, services.memory.admin, services.overlay.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
