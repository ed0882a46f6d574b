"""Settings of the trainer (``CONVO_DATASET__*``, ``CONVO_LORA__*``, ``CONVO_TRAINER__*``)."""

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings, SettingsGroup

STATE = Path(".convo")  # relative to the working directory: the repo (make run) or /app (compose)


class DatasetSettings(SettingsGroup):
    """Where the training rows live and how they are split."""

    dir: Path = STATE / "dataset"
    """Holds ``rows-v<N>.jsonl`` (every row) and ``export/`` (train/eval snapshots)."""
    eval_fraction: float = Field(0.2, ge=0, lt=1)
    """Share of persons (not rows) held out for evaluation; no person is in both splits."""
    max_input_tokens: int = Field(1024, ge=16)
    """Rows longer than this (prompt and answer, in tokens) are skipped and counted."""


class LoraSettings(SettingsGroup):
    """The fine-tune: base model, LoRA shape and the optimiser."""

    base_model: str = "auto"
    """A Hugging Face model id or directory; ``auto``: the packaged SmolLM2-135M-Instruct GGUF."""
    cache_dir: Path = STATE / "models"
    """``auto``'s GGUF is converted once to a fp32 checkpoint here (~540 MB), then loads in a second."""
    quantize: str = "auto"
    """``4bit`` (Q-LoRA, NF4 via bitsandbytes, CUDA only), ``none`` (fp32), or ``auto`` (4bit on CUDA)."""
    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """LoRA dropout."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Which linear layers get adapters."""
    learning_rate: float = Field(1e-3, gt=0)
    """AdamW learning rate."""
    steps: int = Field(40, ge=1)
    """Optimiser steps per job."""
    batch_size: int = Field(4, ge=1)
    """Rows per step."""
    seed: int = 0
    """Shuffling and initialisation seed, so a job can be repeated."""


class JobSettings(SettingsGroup):
    """When jobs run and where adapters go."""

    every_rows: int = Field(200, ge=1)
    """Start a job once this many new rows have arrived (``convo train`` starts one at once)."""
    check_every_s: float = Field(30.0, gt=0)
    """How often the trainer service looks at the new-row count."""
    adapters_dir: Path = STATE / "adapters"
    """One directory per adapter version."""
    lock_ttl_s: int = Field(600, ge=10)
    """The job lock expires this long after its last renewal (a crashed job frees it)."""


class TrainerSettings(ServiceSettings):
    """Settings of ``python -m services.trainer``."""

    dataset: DatasetSettings = DatasetSettings()
    """Training rows (``CONVO_DATASET__DIR=...``)."""
    lora: LoraSettings = LoraSettings()
    """The fine-tune (``CONVO_LORA__BASE_MODEL=meta-llama/Meta-Llama-3-8B-Instruct``)."""
    trainer: JobSettings = JobSettings()
    """Jobs and adapters (``CONVO_TRAINER__EVERY_ROWS=200``)."""
