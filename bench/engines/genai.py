"""onnxruntime-genai: its own model builder (int4) and its own runtime."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Source


class _Session:
    def __init__(self, artifact: Path, threads: int, context: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(artifact))
        config.clear_providers()
        config.overlay(f'{{"model": {{"decoder": {{"session_options": {{"intra_op_num_threads": {threads}}}}}}}}}')
        self.model = og.Model(config)
        self.context = context

    def _new(self):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.context, min_length=0)
        self.generator = self.og.Generator(self.model, params)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self._new()
        self.generator.append_tokens(list(ids))
        return np.asarray(self.generator.get_logits())[0, -1]

    def decode(self, token: int) -> np.ndarray:
        self.generator.append_tokens([token])
        return np.asarray(self.generator.get_logits())[0, -1]

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        # its graph computes the lm_head for the last position only: one step per position
        rows = [self.prefill(ids[:1])]
        rows += [self.decode(t) for t in ids[1:]]
        return np.stack(rows)


class GenaiEngine:
    name = "onnxruntime-genai"
    venv = "main"

    def version(self) -> str:
        import onnxruntime_genai

        return f"onnxruntime-genai {onnxruntime_genai.__version__}"

    def variants(self, source: Source) -> list[str]:
        return ["int4"]

    def speed_variants(self, source: Source) -> list[str]:
        return ["int4"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source.hf), "-o", str(out)]
        command += ["-p", variant, "-e", "cpu", "-c", str(out.parent / f"{out.name}-cache")]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> _Session:
        return _Session(artifact, threads, context)

    def model_files(self, artifact: Path) -> list[Path]:
        return [p for p in artifact.iterdir() if p.suffix in (".onnx", ".data")]
