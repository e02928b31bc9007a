"""transformers in float32 on PyTorch: the unquantized model, what every artifact is compared to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Source


class _Session:
    def __init__(self, artifact: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval()

    def _run(self, ids: Sequence[int], past=None):
        with self.torch.no_grad():
            out = self.model(self.torch.tensor([list(ids)]), past_key_values=past, use_cache=True)
        self.past = out.past_key_values
        return out.logits[0].float().numpy()

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)[-1]

    def decode(self, token: int) -> np.ndarray:
        return self._run([token], self.past)[-1]

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids)


class TransformersEngine:
    name = "transformers"
    venv = "main"

    def version(self) -> str:
        import torch
        import transformers

        return f"transformers {transformers.__version__}, PyTorch {torch.__version__}"

    def variants(self, source: Source) -> list[str]:
        return ["fp32"]

    def speed_variants(self, source: Source) -> list[str]:
        return ["fp32"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "source").symlink_to(source.hf.resolve())

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> _Session:
        return _Session(artifact / "source", threads)

    def model_files(self, artifact: Path) -> list[Path]:
        return sorted((artifact / "source").glob("*.safetensors"))
