"""Trainer: dataset export and LoRA fine-tuning on encounters (not built yet; see docs/ARCHITECTURE.md)."""
