"""transformers in float32 on PyTorch: the unquantized model, what every artifact is compared to."""

from __future__ import annotations

from pathlib import Path

from .base import CausalLMSession, Source


def open_session(artifact: Path, threads: int) -> CausalLMSession:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    return CausalLMSession(AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval(), torch)


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

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> CausalLMSession:
        return open_session(artifact / "source", threads)

    def model_files(self, artifact: Path) -> list[Path]:
        return sorted((artifact / "source").glob("*.safetensors"))
