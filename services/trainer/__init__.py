"""Trainer: encounters into scrubbed training rows, LoRA / Q-LoRA jobs and the adapter registry."""
