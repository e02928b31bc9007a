"""Open whatever the user points at — an exported artifact, an mlx-lm folder or a source
checkpoint — as a runtime plus its tokenizer. Artifacts are opened by their kind (the manifest's
format, flavor and graph), one opener per kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import MODEL_FILE, Manifest, is_artifact, read_manifest
from ..errors import EdgekitError
from ..runtimes.base import Runtime
from ..sources.hf import read_tokenizer_files
from ..spec import ModelSpec, id_tuple
from .tokenizer import TextTokenizer

Providers = list[str | tuple[str, dict[str, str]]]


@dataclass
class Loaded:
    runtime: Runtime
    tokenizer: TextTokenizer
    spec: ModelSpec | None  # None for an architecture outside the native families (optimum path)
    name: str
    backend: str
    manifest: Manifest | None = None
    vocab_size: int = 0

    def __post_init__(self) -> None:
        if not self.vocab_size and self.spec is not None:
            self.vocab_size = self.spec.vocab_size


@dataclass(frozen=True)
class LoadOptions:
    max_context: int | None = None
    threads: int | None = None
    providers: Providers | None = None
    prefill_chunk: int | None = None
    huge_pages: bool = True


DEFAULT_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _open_mlx(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.mlx import MlxRuntime

    return MlxRuntime(folder, context, prefill_chunk=options.prefill_chunk, threads=options.threads), "mlx"


def _open_onnx(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.onnx import OnnxRuntime

    flavor = manifest.flavor or "cpu"
    runtime = OnnxRuntime(
        folder / MODEL_FILE,
        manifest.spec,
        context,
        providers=options.providers or DEFAULT_PROVIDERS[flavor],
        threads=options.threads or None,
        kv_dtype=np.float16 if flavor == "cuda" else np.float32,
        prefill_chunk=options.prefill_chunk,
        huge_pages=options.huge_pages,
    )
    return runtime, "onnx"


def _open_npu(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.onnx_npu import NpuRuntime  # static QDQ graphs on QNN's HTP backend (onnxruntime-qnn)

    npu = manifest.npu or {}
    runtime = NpuRuntime(folder, manifest.spec, npu, context, qnn_options=npu.get("qnn_options"))
    return runtime, "onnx npu (QNN HTP)"


def _open_optimum(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.onnx_optimum import OptimumRuntime

    runtime = OptimumRuntime(
        folder / MODEL_FILE,
        context,
        providers=options.providers or DEFAULT_PROVIDERS["cpu"],
        threads=options.threads or None,
        prefill_chunk=options.prefill_chunk,
        huge_pages=options.huge_pages,
    )
    return runtime, "onnx (optimum graph)"


OPENERS: dict[str, Callable[[Path, Manifest, int, LoadOptions], tuple[Runtime, str]]] = {
    "mlx": _open_mlx,
    "onnx-cpu": _open_onnx,
    "onnx-cuda": _open_onnx,
    "onnx-npu": _open_npu,
    "onnx-optimum": _open_optimum,
}


def load_runtime(
    path: str | Path,
    max_context: int | None = None,
    threads: int | None = None,
    providers: Providers | None = None,
    prefill_chunk: int | None = None,
    huge_pages: bool = True,
) -> Loaded:
    """providers: ONNX Runtime execution providers in order of preference, a name or (name, options);
    default: the artifact flavor's. threads: 0 or None = ONNX Runtime's choice. huge_pages: move
    ONNX Runtime's repacked weights onto huge pages after loading (Linux; faster decoding)."""
    options = LoadOptions(max_context, threads, providers, prefill_chunk, huge_pages)
    folder = Path(path)
    if is_artifact(folder):
        return _load_artifact(folder, options)
    from ..runtimes.mlx import is_mlx_folder

    if is_mlx_folder(folder):
        return _load_mlx_lm(folder, options)
    return _load_checkpoint(path, options)


def _load_artifact(folder: Path, options: LoadOptions) -> Loaded:
    manifest = read_manifest(folder)
    opener = OPENERS.get(manifest.kind)
    if opener is None:
        raise EdgekitError(
            f"{folder}: a {manifest.kind} artifact cannot be run by this edgekit; "
            f"it runs {', '.join(OPENERS)}: re-export for one of those"
        )
    if options.max_context and options.max_context > manifest.max_context:
        raise EdgekitError(
            f"{folder}: max context {options.max_context} is longer than the artifact's "
            f"{manifest.max_context}; re-export with --max-context {options.max_context}"
        )
    context = min(options.max_context or 4096, manifest.max_context)
    eos = manifest.eos_token_ids or (manifest.spec.eos_token_ids if manifest.spec else ())
    # before the runtime: the tokenizer's parsing temporaries then land in heap the session reuses
    # (the other way round SmolLM2's peak RSS was 30 MB higher)
    tokenizer = TextTokenizer(read_tokenizer_files(folder), eos)  # the artifact keeps HF's file layout
    runtime, backend = opener(folder, manifest, context, options)
    return Loaded(runtime, tokenizer, manifest.spec, manifest.source.name, backend, manifest, manifest.vocab_size)


def _load_mlx_lm(folder: Path, options: LoadOptions) -> Loaded:
    """A folder mlx-lm converted."""
    from ..runtimes.mlx import MlxRuntime

    runtime = MlxRuntime(folder, options.max_context, prefill_chunk=options.prefill_chunk, threads=options.threads)
    files = read_tokenizer_files(folder)
    eos = tuple(dict.fromkeys(runtime.spec.eos_token_ids + id_tuple(files.generation_config.get("eos_token_id"))))
    return Loaded(runtime, TextTokenizer(files, eos), runtime.spec, folder.name, "mlx")


def _load_checkpoint(path: str | Path, options: LoadOptions) -> Loaded:
    """A source checkpoint, run by the numpy reference (for checking)."""
    from ..reference import ReferenceModel
    from ..runtimes.reference import ReferenceRuntime
    from ..sources import open_checkpoint

    checkpoint = open_checkpoint(path)
    limit = checkpoint.spec.max_position_embeddings
    context = min(options.max_context or limit, limit)
    runtime = ReferenceRuntime(ReferenceModel.from_checkpoint(checkpoint), context)
    tokenizer = TextTokenizer(checkpoint.tokenizer, checkpoint.eos_token_ids)
    return Loaded(runtime, tokenizer, checkpoint.spec, checkpoint.name, "numpy reference (fp32)")
