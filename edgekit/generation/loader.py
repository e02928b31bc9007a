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
from ..runtimes.base import Runtime, kv_bytes_per_token
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
    parallel: int | None = None  # sequences decoded together (a batch runtime); None: one, the plain runtime
    kv_cache_mb: int | None = None  # the budget of those sequences' KV cache; None: no limit


# a slot's context below this is too short to be useful: a KV budget that leaves less is refused
MIN_SLOT_CONTEXT = 256

DEFAULT_PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def _open_mlx(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.mlx import MlxRuntime

    kv_bits = manifest.kv_bits or 0
    runtime = MlxRuntime(folder, context, prefill_chunk=options.prefill_chunk, threads=options.threads, kv_bits=kv_bits)
    return runtime, "mlx"


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


def _open_mlx_batch(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.mlx_batch import MlxBatchRuntime, kv_itemsize

    slots = options.parallel or 1
    kv_bits = manifest.kv_bits or 0
    context = slot_context(manifest.spec, kv_itemsize(manifest.spec, kv_bits), slots, context, options.kv_cache_mb)
    runtime = MlxBatchRuntime(
        folder, context, slots, prefill_chunk=options.prefill_chunk, threads=options.threads, kv_bits=kv_bits
    )
    return runtime, f"mlx, {slots} sequences batched"


def _open_onnx_batch(folder: Path, manifest: Manifest, context: int, options: LoadOptions) -> tuple[Runtime, str]:
    from ..runtimes.onnx_batch import OnnxBatchRuntime

    flavor = manifest.flavor or "cpu"
    kv_dtype = np.float16 if flavor == "cuda" else np.float32
    slots = options.parallel or 1
    context = slot_context(manifest.spec, np.dtype(kv_dtype).itemsize, slots, context, options.kv_cache_mb)
    runtime = OnnxBatchRuntime(
        folder / MODEL_FILE,
        manifest.spec,
        context,
        slots,
        providers=options.providers or DEFAULT_PROVIDERS[flavor],
        threads=options.threads or None,
        kv_dtype=kv_dtype,
        prefill_chunk=options.prefill_chunk,
        huge_pages=options.huge_pages,
    )
    return runtime, f"onnx, {slots} sequences batched"


def slot_context(spec: ModelSpec, itemsize: int, slots: int, context: int, budget_mb: int | None) -> int:
    """The context each of `slots` sequences gets: `context`, cut to what the KV budget holds."""
    if not budget_mb:
        return context
    per_token = kv_bytes_per_token(spec, itemsize)
    fits = (budget_mb << 20) // (slots * per_token)
    if fits < min(context, MIN_SLOT_CONTEXT):
        need = -(-slots * per_token * min(context, MIN_SLOT_CONTEXT) // (1 << 20))
        raise EdgekitError(
            f"{slots} sequences of {min(context, MIN_SLOT_CONTEXT)} positions need {need} MB of KV cache "
            f"but the budget is {budget_mb} MB; serve fewer at once (--parallel) or raise the budget (kv_cache_mb)"
        )
    return min(context, fits)


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
# the kinds whose runtime decodes several sequences in one run (the npu flavor's static shapes hold one)
BATCH_OPENERS: dict[str, Callable[[Path, Manifest, int, LoadOptions], tuple[Runtime, str]]] = {
    "mlx": _open_mlx_batch,
    "onnx-cpu": _open_onnx_batch,
    "onnx-cuda": _open_onnx_batch,
}


def why_not_batched(path: str | Path) -> str | None:
    """None when `path` is an artifact whose runtime batches sequences, else why not."""
    folder = Path(path)
    if not is_artifact(folder):
        return f"{folder.name} is not an exported artifact"
    kind = read_manifest(folder, check_files=False).kind
    return None if kind in BATCH_OPENERS else f"a {kind} artifact runs one sequence at a time"


def load_runtime(
    path: str | Path,
    max_context: int | None = None,
    threads: int | None = None,
    providers: Providers | None = None,
    prefill_chunk: int | None = None,
    huge_pages: bool = True,
    parallel: int | None = None,
    kv_cache_mb: int | None = None,
) -> Loaded:
    """providers: ONNX Runtime execution providers in order of preference, a name or (name, options);
    default: the artifact flavor's. threads: 0 or None = ONNX Runtime's choice. huge_pages: move
    ONNX Runtime's repacked weights onto huge pages after loading (Linux; faster decoding).
    parallel: a batch runtime for that many sequences (artifacts of BATCH_OPENERS' kinds), their KV
    cache within kv_cache_mb (each sequence's context is cut to fit)."""
    options = LoadOptions(max_context, threads, providers, prefill_chunk, huge_pages, parallel, kv_cache_mb)
    if parallel is not None and parallel < 1:
        raise EdgekitError(f"parallel={parallel}: the number of sequences decoded together must be at least 1")
    folder = Path(path)
    if is_artifact(folder):
        return _load_artifact(folder, options)
    from ..runtimes.mlx import is_mlx_folder

    if parallel is not None:
        raise EdgekitError(f"{folder}: parallel decoding needs an exported artifact; export it first")
    if is_mlx_folder(folder):
        return _load_mlx_lm(folder, options)
    return _load_checkpoint(path, options)


def _load_artifact(folder: Path, options: LoadOptions) -> Loaded:
    manifest = read_manifest(folder)
    opener = OPENERS.get(manifest.kind)
    if options.parallel is not None:
        opener = BATCH_OPENERS.get(manifest.kind)
        if opener is None:
            raise EdgekitError(
                f"{folder}: a {manifest.kind} artifact runs one sequence at a time; load it without parallel"
            )
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
