"""edgekit itself: `edgekit export` (ONNX for ONNX Runtime, or MLX) and edgekit's runtimes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Source

# variant -> export options. The real model gets the default recipe (blocks of 128), the same at
# blocks of 64 and 32, and the single-algorithm recipes for the quality plot, calibrated on the
# source's calibration text; random weights get RTN in the default's blocks, since calibrating on
# noise means nothing and only costs time.
ONNX_VARIANTS = {
    "default": [],
    "awq-gptq-g64": ["-g", "64"],
    "awq-gptq-g32": ["-g", "32"],
    "rtn-g32": ["-a", "rtn", "-g", "32", "--asymmetric"],
    "rtn-g128": ["-a", "rtn", "-g", "128", "--asymmetric"],
    "hqq-g32": ["-a", "hqq", "-g", "32", "--asymmetric"],
    "hqq-g128": ["-a", "hqq", "-g", "128", "--asymmetric"],
    "awq-g32": ["-a", "awq", "-g", "32", "--asymmetric"],
    "gptq-g32": ["-a", "gptq", "-g", "32", "--asymmetric"],
    "rtn-8bit": ["-a", "rtn", "--bits", "8", "--embedding-bits", "8"],
}
# exported when named (bench/quality_peers.py), not in the suite: each layer's scales tuned (torch);
# the most any measured recipe keeps near 5 bits/weight (5.03 in the file), at blocks of 32's prefill cost
ONNX_OPT_IN = {
    "layer-tuned": ["--layer-tune-steps", "10"],
    "g32-key8-tuned": ["-g", "32", "--edge-down-bits", "4", "--key-bits", "8", "--layer-tune-steps", "10"],
}
# the MLX default leaves a tied model's stream unrotated (mlx-lm loads the folder); "rotated" asks for it
# 5- and 6-bit codes, which MLX reads and ONNX Runtime does not
MLX_VARIANTS = {
    "default": [],
    "rotated": ["--rotate-residual"],
    "5bit-rotated": ["--bits", "5", "--rotate-residual"],
    "6bit": ["--bits", "6"],
    # 5-bit codes in every layer weight but gate_proj, each layer's scales tuned: about 5 bits/weight
    "5bit-but-gate-tuned": "--bits 5 --edge-down-bits 5 --tensor-bits *.gate_proj=4 --rotate-residual "
    "--layer-tune-steps 10".split(),
}


class _RuntimeSession:
    def __init__(self, artifact: Path, threads: int | None, context: int, providers: list[str] | None = None):
        from edgekit.generation.loader import load_runtime

        self.runtime = load_runtime(artifact, max_context=context, threads=threads, providers=providers).runtime

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.runtime.reset()
        return self.runtime.prefill(ids)

    def decode(self, token: int) -> np.ndarray:
        return self.runtime.decode(token)

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        return self.runtime.logits_all(ids)


class EdgekitEngine:
    venv = "main"

    def __init__(self, fmt: str):
        self.format = fmt
        self.name = "edgekit" if fmt == "onnx" else "edgekit-mlx"

    def version(self) -> str:
        import edgekit

        if self.format == "mlx":
            import mlx.core as mx

            return f"{edgekit.__version__}, MLX {mx.__version__} (CPU backend)"
        import onnxruntime

        return f"{edgekit.__version__}, ONNX Runtime {onnxruntime.__version__}"

    def variants(self, source: Source) -> list[str]:
        if not source.real:
            return ["rtn-g128"]
        return list(ONNX_VARIANTS) if self.format == "onnx" else ["default"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        command = [sys.executable, "-m", "edgekit", "export", str(source.gguf or source.hf), "-o", str(out)]
        options = ({**ONNX_VARIANTS, **ONNX_OPT_IN} if self.format == "onnx" else MLX_VARIANTS)[variant]
        command += ["--format", self.format, "--max-context", "2048", "--overwrite", "--json", *options]
        if source.calibration:
            command += ["--calibration", str(source.calibration)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)

    def speed_variants(self, source: Source) -> list[str]:
        # the default recipe at blocks of 128, 64 and 32, and HQQ's float zero points against integer ones
        if source.real and self.format == "onnx":
            return ["default", "awq-gptq-g64", "awq-gptq-g32", "hqq-g32"]
        return self.variants(source)[:1]

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> _RuntimeSession:
        return _RuntimeSession(artifact, threads, context)

    def model_files(self, artifact: Path) -> list[Path]:
        manifest = json.loads((artifact / "edgekit.json").read_text())
        return [artifact / name for name in manifest["files"] if name.endswith((".onnx", ".data", ".safetensors"))]
