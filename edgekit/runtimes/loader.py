"""Open whatever the user points at — an exported artifact or a source checkpoint — as a runtime
plus its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..generation.tokenizer import TextTokenizer
from ..sources.hf import read_tokenizer_files
from ..spec import ModelSpec, id_tuple
from .base import Runtime


@dataclass
class Loaded:
    runtime: Runtime
    tokenizer: TextTokenizer
    spec: ModelSpec | None  # None for an architecture outside the native families (optimum path)
    name: str
    backend: str
    manifest: dict[str, Any] | None = None
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if not self.vocab_size and self.spec is not None:
            self.vocab_size = self.spec.vocab_size


DEFAULT_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def load_runtime(
    path: str | Path,
    max_context: int | None = None,
    threads: int | None = None,
    providers: list[str | tuple[str, dict[str, str]]] | None = None,
    prefill_chunk: int | None = None,
    huge_pages: bool = True,
) -> Loaded:
    """providers: ONNX Runtime execution providers in order of preference, a name or (name, options);
    default: the artifact flavor's. threads: 0 or None = ONNX Runtime's choice. huge_pages: move
    ONNX Runtime's repacked weights onto huge pages after loading (Linux; faster decoding)."""
    from ..exporters.artifact import MANIFEST, read_manifest
    from ..exporters.onnx import MODEL_FILE
    from .mlx import MlxRuntime, is_mlx_folder
    from .onnx import OnnxRuntime

    folder = Path(path)
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        if manifest.get("graph") == "optimum":
            return _load_optimum(folder, manifest, max_context, threads, providers, prefill_chunk, huge_pages)
        spec = ModelSpec.from_dict(manifest["spec"])
        context = min(max_context or 4096, manifest["max_context"])
        if max_context and max_context > manifest["max_context"]:
            raise EdgekitError(
                f"{folder}: max context {max_context} is longer than the artifact's "
                f"{manifest['max_context']}; re-export with --max-context {max_context}"
            )
        eos = tuple(manifest.get("eos_token_ids", spec.eos_token_ids))
        tokenizer = TextTokenizer(read_tokenizer_files(folder), eos)  # the artifact keeps HF's file layout
        name = manifest["source"]["name"]
        if manifest["format"] == "mlx":
            runtime: Runtime = MlxRuntime(folder, context, prefill_chunk=prefill_chunk, threads=threads)
            return Loaded(runtime, tokenizer, spec, name, "mlx", manifest)
        flavor = manifest["flavor"]
        if flavor == "npu":  # static QDQ graphs on QNN's HTP backend (onnxruntime-qnn)
            from .onnx_npu import NpuRuntime

            runtime = NpuRuntime(folder, spec, manifest["npu"], context, qnn_options=manifest["npu"].get("qnn_options"))
            return Loaded(runtime, tokenizer, spec, name, "onnx npu (QNN HTP)", manifest)
        if flavor not in DEFAULT_PROVIDERS:
            raise EdgekitError(f"{folder}: flavor '{flavor}' cannot be run by this edgekit; re-export for cpu or cuda")
        runtime = OnnxRuntime(
            folder / MODEL_FILE,
            spec,
            context,
            providers=providers or DEFAULT_PROVIDERS[flavor],
            threads=threads or None,
            kv_dtype=np.float16 if flavor == "cuda" else np.float32,
            prefill_chunk=prefill_chunk,
            huge_pages=huge_pages,
        )
        return Loaded(runtime, tokenizer, spec, name, "onnx", manifest)
    if is_mlx_folder(folder):  # an mlx-lm conversion
        runtime = MlxRuntime(folder, max_context, prefill_chunk=prefill_chunk, threads=threads)
        files = read_tokenizer_files(folder)
        eos = tuple(dict.fromkeys(runtime.spec.eos_token_ids + id_tuple(files.generation_config.get("eos_token_id"))))
        return Loaded(runtime, TextTokenizer(files, eos), runtime.spec, folder.name, "mlx")
    from ..reference import ReferenceModel
    from ..sources import open_checkpoint
    from .reference import ReferenceRuntime

    checkpoint = open_checkpoint(path)
    context = min(max_context or checkpoint.spec.max_position_embeddings, checkpoint.spec.max_position_embeddings)
    runtime = ReferenceRuntime(ReferenceModel.from_checkpoint(checkpoint), context)
    tokenizer = TextTokenizer(checkpoint.tokenizer, checkpoint.eos_token_ids)
    return Loaded(runtime, tokenizer, checkpoint.spec, checkpoint.name, "numpy reference (fp32)")


def _load_optimum(
    folder: Path,
    manifest: dict[str, Any],
    max_context: int | None,
    threads: int | None,
    providers: list[str | tuple[str, dict[str, str]]] | None,
    prefill_chunk: int | None,
    huge_pages: bool,
) -> Loaded:
    from .onnx_optimum import MODEL_FILE, OptimumRuntime

    if max_context and max_context > manifest["max_context"]:
        raise EdgekitError(
            f"{folder}: max context {max_context} is longer than the artifact's "
            f"{manifest['max_context']}; re-export with --max-context {max_context}"
        )
    runtime = OptimumRuntime(
        folder / MODEL_FILE,
        min(max_context or 4096, manifest["max_context"]),
        providers=providers or DEFAULT_PROVIDERS["cpu"],
        threads=threads or None,
        prefill_chunk=prefill_chunk,
        huge_pages=huge_pages,
    )
    tokenizer = TextTokenizer(read_tokenizer_files(folder), tuple(manifest.get("eos_token_ids", ())))
    name = manifest["source"]["name"]
    return Loaded(runtime, tokenizer, None, name, "onnx (optimum graph)", manifest, manifest["vocab_size"])
