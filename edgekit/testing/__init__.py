"""Helpers for tests and benchmarks: tiny random checkpoints of every supported family."""

from .tiny import FAMILY_CASES, tiny_config, tiny_tokenizer, write_checkpoint, write_tiny_checkpoint

__all__ = ["FAMILY_CASES", "tiny_config", "tiny_tokenizer", "write_checkpoint", "write_tiny_checkpoint"]
