"""mlx-lm: its own converter (`mlx_lm convert -q`) and its own model code, on MLX's CPU backend here.

The model is cast to float32 after loading: MLX's float16 kernels on a CPU take seconds per token
(0.2 tokens/s on SmolLM2 here), which would measure nothing but that."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Source

VARIANTS = {
    "4bit-g64": ["--q-bits", "4", "--q-group-size", "64"],
    "8bit-g64": ["--q-bits", "8", "--q-group-size", "64"],
}


class _Session:
    def __init__(self, artifact: Path):
        import mlx.core as mx
        from mlx_lm import load

        self.model, _ = load(str(artifact))
        self.model.set_dtype(mx.float32)

    def _logits(self, ids: Sequence[int]):
        import mlx.core as mx

        logits = self.model(mx.array(list(ids))[None], cache=self.cache)[0].astype(mx.float32)
        mx.eval(logits)
        return logits

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        from mlx_lm.models.cache import make_prompt_cache

        self.cache = make_prompt_cache(self.model)
        return np.array(self._logits(ids)[-1])

    def decode(self, token: int) -> np.ndarray:
        return np.array(self._logits([token])[-1])

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.cache = None
        return np.array(self._logits(ids))


class MlxLmEngine:
    name = "mlx-lm"
    venv = "main"

    def version(self) -> str:
        import mlx.core as mx
        import mlx_lm

        return f"mlx-lm {mlx_lm.__version__}, MLX {mx.__version__} (CPU backend)"

    def variants(self, source: Source) -> list[str]:
        return ["4bit-g64"]  # its 8-bit variant would add minutes of MLX's CPU backend for one plot point

    def speed_variants(self, source: Source) -> list[str]:
        return ["4bit-g64"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        command = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(source.hf), "--mlx-path", str(out), "-q"]
        subprocess.run([*command, *VARIANTS[variant]], check=True, stdout=subprocess.DEVNULL)

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> _Session:
        return _Session(artifact)

    def model_files(self, artifact: Path) -> list[Path]:
        return sorted(artifact.glob("*.safetensors"))
