"""llama.cpp through llama-cpp-python: a float16 GGUF written from the source (what llama.cpp's
convert_hf_to_gguf.py makes), then llama.cpp's own quantizer (llama_model_quantize) to each type.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import Source

# variant -> llama.cpp file type; the first two are also timed (its fastest 4-bit type on x86
# and its most recommended one)
TYPES = {
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}
MODEL = "model.gguf"


def gguf_pre_tokenizer(path: Path) -> str:
    """llama.cpp's name of a GGUF's pre-tokenizer."""
    import gguf

    return bytes(gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].parts[-1]).decode()


def write_f16_gguf(source: Source, path: Path) -> None:
    from edgekit.sources import open_checkpoint
    from edgekit.testing.gguf_writer import write_gguf

    checkpoint = open_checkpoint(source.hf)
    if source.gguf is None and not source.gguf_pre:
        # random weights carry a stand-in tokenizer: make up a vocabulary of the model's size
        write_gguf(checkpoint, path, "F16", vocab="spm")
        return
    pre = source.gguf_pre or gguf_pre_tokenizer(source.gguf)
    write_gguf(checkpoint, path, "F16", pre_tokenizer=pre)


def quantize(f16: Path, out: Path, variant: str, threads: int = 2) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, TYPES[variant])
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize to {variant} failed ({status})")


class _Session:
    def __init__(self, artifact: Path, threads: int, context: int, all_logits: bool):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(artifact / MODEL),
            n_ctx=context,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=max(512, context),  # llama-cpp-python keeps n_batch rows of logits; ubatch stays 512
            # llama.cpp's own tools turn flash attention on where it runs (auto); llama-cpp-python
            # turns it off unless asked. On: prefill +31%, decode +6% for SmolLM2 Q4_0 here.
            flash_attn=True,
            logits_all=all_logits,
            verbose=False,
        )

    def _last(self) -> np.ndarray:
        return np.asarray(self.llm.scores[self.llm.n_tokens - 1])

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._last()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last()

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)])


class LlamaCppEngine:
    name = "llama.cpp"
    venv = "main"

    def version(self) -> str:
        import llama_cpp

        return f"llama-cpp-python {llama_cpp.__version__}"

    def variants(self, source: Source) -> list[str]:
        return list(TYPES) if source.real else ["Q4_0", "Q4_K_M"]

    def speed_variants(self, source: Source) -> list[str]:
        return ["Q4_0", "Q4_K_M"]

    def export(self, source: Source, variant: str, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        f16 = out / "f16.gguf"
        write_f16_gguf(source, f16)
        quantize(f16, out / MODEL, variant)
        f16.unlink()

    def open(self, artifact: Path, threads: int, context: int, all_logits: bool = False) -> _Session:
        return _Session(artifact, threads, context, all_logits)

    def model_files(self, artifact: Path) -> list[Path]:
        return [artifact / MODEL]
