"""optimum: `optimum-cli export onnx` (float32), then optimum's own ONNX Runtime quantizer (dynamic
int8 weights, the avx2 preset), run with its ORTModelForCausalLM. Runs in the optimum virtualenv
(optimum-onnx needs transformers < 5)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .base import CausalLMSession, Source

QUANTIZED = "model_quantized.onnx"


def open_session(artifact: Path, threads: int) -> CausalLMSession:
    import onnxruntime
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    torch.set_num_threads(threads)
    model = ORTModelForCausalLM.from_pretrained(
        artifact, file_name=QUANTIZED, session_options=options, provider="CPUExecutionProvider"
    )
    return CausalLMSession(model, torch)


def export_and_quantize(hf: Path, out: Path) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    fp32 = out.parent / f"{out.name}-fp32"
    command = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(hf)]
    subprocess.run([*command, "--task", "text-generation-with-past", str(fp32)], check=True, stdout=subprocess.DEVNULL)
    quantizer = ORTQuantizer.from_pretrained(fp32, file_name="model.onnx")
    quantizer.quantize(AutoQuantizationConfig.avx2(is_static=False, per_channel=True), save_dir=out)
    for extra in fp32.iterdir():  # config and tokenizer files, which ORTModelForCausalLM reads
        if not extra.name.startswith("model") and not (out / extra.name).exists():
            shutil.copy(extra, out / extra.name)
    shutil.rmtree(fp32)


class OptimumEngine:
    name = "optimum"
    venv = "optimum"

    def version(self) -> str:
        import importlib.metadata

        import onnxruntime

        return f"optimum-onnx {importlib.metadata.version('optimum-onnx')}, ONNX Runtime {onnxruntime.__version__}"

    def variants(self, source: Source) -> list[str]:
        return ["int8-dynamic"]

    def speed_variants(self, source: Source) -> list[str]:
        return ["int8-dynamic"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        export_and_quantize(source.hf, out)

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> CausalLMSession:
        return open_session(artifact, threads)

    def model_files(self, artifact: Path) -> list[Path]:
        return [p for p in artifact.iterdir() if p.name.startswith(QUANTIZED)]
