"""Tokens/s of the trainer's LoRA loop against a bare peft + transformers loop, on the same rows,
the same base model (SmolLM2-135M-Instruct from the packaged GGUF, fp32 on CPU), the same
LoRA shape and batch size, in one run. The two loops alternate to share the machine's noise.
"""

import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.nn.utils.rnn import pad_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import report
from services.trainer.dataset import Dataset, rows_from
from services.trainer.model import IGNORE, load_base, prepare, train, with_lora
from services.trainer.settings import DatasetSettings, LoraSettings
from tests.trainer.conftest import encounter

STEPS = 8
ROUNDS = 2


def bare_loop(
    model: torch.nn.Module, examples: list, lora: LoraSettings, pad_id: int, steps: int = STEPS
) -> tuple[int, float]:
    """What one would write with peft and transformers alone."""
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lora.learning_rate)
    model.train()
    tokens, started = 0, time.perf_counter()
    device = next(model.parameters()).device
    for step in range(steps):
        batch = [examples[(step * lora.batch_size + i) % len(examples)] for i in range(lora.batch_size)]
        ids = pad_sequence([torch.tensor(e.input_ids) for e in batch], batch_first=True, padding_value=pad_id)
        labels = pad_sequence([torch.tensor(e.labels) for e in batch], batch_first=True, padding_value=IGNORE)
        mask = pad_sequence([torch.ones(len(e.input_ids), dtype=torch.long) for e in batch], batch_first=True)
        ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
    return tokens, time.perf_counter() - started


def main() -> None:
    lora = LoraSettings(steps=STEPS, batch_size=4)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Dataset(DatasetSettings(dir=Path(tmp)))
        dataset.append([row for i in range(30) for row in rows_from(encounter(i))])
        rows = dataset.rows()
    started = time.perf_counter()
    base, tokenizer = load_base(lora)
    print(f"base model loaded in {time.perf_counter() - started:.1f} s")
    examples = prepare(rows, tokenizer, 1024).examples
    pad = tokenizer.pad_token_id
    ours = with_lora(copy.deepcopy(base), lora)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )  # fmt: skip
    torch.manual_seed(lora.seed)
    bare = get_peft_model(copy.deepcopy(base), config)
    totals = {"pipeline": [0, 0.0], "bare": [0, 0.0]}
    for _ in range(ROUNDS):
        result = train(ours, examples, lora, pad, progress=False)
        totals["pipeline"][0] += result.tokens
        totals["pipeline"][1] += result.seconds
        tokens, seconds = bare_loop(bare, examples, lora, pad)
        totals["bare"][0] += tokens
        totals["bare"][1] += seconds
    rates = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    for name, rate in rates.items():
        print(f"{name:<9} {rate:8.1f} tokens/s ({totals[name][0]} tokens in {totals[name][1]:.1f} s)")
    report("trainer", ratio_vs_raw=rates["pipeline"] / rates["bare"], tokens_per_s=rates["pipeline"])


if __name__ == "__main__":
    main()
