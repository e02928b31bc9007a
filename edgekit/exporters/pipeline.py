"""export(): plan -> open -> quantize -> write and verify -> manifest, into a staging folder renamed
into place. What differs between artifacts is one `Writer` per (format, flavor), in WRITERS."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifact import ExportResult, Manifest, QuantizationRecord, SourceRecord, folder_megabytes, staging
from ..device_profiles import DeviceProfile, ExportSettings, load_profile
from ..errors import EdgekitError, UnsupportedArchitectureError, require
from ..families import EMBED, FINAL_ROTATION, module
from ..quant.calibration import calibration_sequences, read_text
from ..quant.pipeline import Progress, QuantizedModel, quantize_checkpoint
from ..quant.recipe import DEFAULT_RECIPE, Recipe
from ..quant.spill import SpilledTensors
from ..quant.tensor import layer_group
from ..sources import Checkpoint, open_checkpoint
from ..spec import ModelSpec, weight_shapes
from .mlx import verify_mlx, write_mlx
from .onnx import verify_onnx, write_onnx
from .onnx_decoder import OnnxOptions

if TYPE_CHECKING:
    from ..distill.layer_tune import LayerTuner
    from ..distill.train import TrainConfig

VIAS = ("native", "optimum")
Note = Callable[[str], None]


@dataclass(frozen=True)
class ExportPlan:
    """Every export setting, resolved from the profile and the arguments that override it."""

    format: str
    flavor: str | None
    recipe: Recipe
    calibration: str | Path | None
    max_context: int | None  # None: the model's own
    accuracy_level: int
    profile: DeviceProfile | None
    settings: ExportSettings
    kv_bits: int = 0  # 8: an int8 KV cache (ONNX cpu/cuda, MLX)


@dataclass(frozen=True)
class WriteJob:
    """What a writer gets: the staging folder, the model and its quantized weights."""

    folder: Path
    checkpoint: Checkpoint
    qm: QuantizedModel
    plan: ExportPlan
    context: int
    prompt: list[int]  # the verification prompt
    note: Note
    calibration: list[list[int]] | None = None  # token windows that set an int8 KV cache's scales


@dataclass(frozen=True)
class Written:
    verify: dict[str, Any]
    context: int
    npu: dict[str, Any] | None = None  # the npu flavor's table for the manifest


@dataclass(frozen=True)
class Writer:
    """One kind of artifact: `require(family)` fails fast when it cannot be made here (family None:
    before the checkpoint is open); `whole_groups`: its kernels need quantization groups that tile
    every row; `write` writes and verifies the files; `kv_bits`: the KV cache bits it can be made
    with (0: float); `kv_scales`: an int8 cache's scales are measured on calibration text at export
    (ONNX's static scales; MLX quantizes each position as it is stored); `rotation`: its runtime
    applies a rotated residual stream's final matrix (Recipe.rotate_residual); `rotates_tied`: the
    default rotates a tied model too, whose artifact then carries that matrix as a tensor of its own;
    `code_bits`: the widths of weight codes its kernels read."""

    require: Callable[[str | None], None]
    whole_groups: bool
    write: Callable[[WriteJob], Written]
    kv_bits: tuple[int, ...] = (0,)
    code_bits: tuple[int, ...] = (4, 8)  # ONNX Runtime's MatMulNBits also reads 2 (not made here)
    kv_scales: bool = False
    rotation: bool = False
    rotates_tied: bool = True


def _nothing_required(family: str | None) -> None:
    return None


def _require_mlx(family: str | None) -> None:
    require("mlx.core", "mlx")  # the export ends by running the artifact


def _require_npu(family: str | None) -> None:
    from .npu.export import require_npu

    require_npu()  # onnxruntime-qnn: the export ends by running the graphs on QNN's HTP backend


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system between export stages (glibc keeps what the
    quantizer's temporaries freed, and the next stage's ONNX Runtime session would come on top)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries have none
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


def _write_onnx(job: WriteJob) -> Written:
    scales = None
    if job.plan.kv_bits:
        from .kv_scales import kv_cache_scales

        job.note("measuring the KV cache's scales on the calibration text")
        scales = tuple(kv_cache_scales(job.checkpoint.spec, job.qm.weights(), job.calibration or [job.prompt]))
    options = OnnxOptions(
        flavor=job.plan.flavor or "cpu",
        max_context=job.context,
        accuracy_level=job.plan.accuracy_level,
        kv_bits=job.plan.kv_bits,
        kv_scales=scales,
    )
    job.note("writing the ONNX graph")
    written = write_onnx(job.folder, job.checkpoint, job.qm, options)
    release_freed_memory()
    job.note("verifying against the numpy reference")
    return Written(verify_onnx(job.folder, job.checkpoint, job.qm, options, job.prompt, written), job.context)


def _write_npu(job: WriteJob) -> Written:
    from .npu.export import export_npu, npu_options

    plan = job.plan
    chunk = plan.profile.runtime.prefill_chunk if plan.profile else None
    npu = npu_options(plan.settings, chunk, plan.max_context, job.context)
    result, table = export_npu(job.folder, job.checkpoint, job.qm, npu, plan.calibration, job.prompt, job.note)
    return Written(result, npu.context, table)


def _write_mlx(job: WriteJob) -> Written:
    job.note("writing the MLX weights")
    if FINAL_ROTATION in job.qm.quantized:
        job.note(
            f"the residual stream is rotated and the lm_head tied: {module(FINAL_ROTATION)} is edgekit's own, "
            "so mlx_lm.load() will not load this folder (--no-rotate-residual for one it loads)"
        )
    write_mlx(job.folder, job.checkpoint, job.qm)
    job.note("verifying against the numpy reference")
    return Written(verify_mlx(job.folder, job.checkpoint, job.qm, job.prompt, kv_bits=job.plan.kv_bits), job.context)


# MLX's groups must tile the row; padded blocks are only known to run in ONNX Runtime's CPU kernels,
# and the cuda flavor has not run on a GPU here yet.
WRITERS: dict[tuple[str, str | None], Writer] = {
    ("onnx", "cpu"): Writer(
        _nothing_required, whole_groups=False, write=_write_onnx, kv_bits=(0, 8), kv_scales=True, rotation=True
    ),
    ("onnx", "cuda"): Writer(
        _nothing_required, whole_groups=True, write=_write_onnx, kv_bits=(0, 8), kv_scales=True, rotation=True
    ),
    ("onnx", "npu"): Writer(_require_npu, whole_groups=False, write=_write_npu),
    # by default only where nothing but the folded weights changes (an untied lm_head): mlx-lm loads the
    # folder as is; a tied model's final matrix is a tensor it does not know, so that one is asked for
    ("mlx", None): Writer(
        _require_mlx,
        whole_groups=True,
        write=_write_mlx,
        kv_bits=(0, 8),
        code_bits=(4, 5, 6, 8),
        rotation=True,
        rotates_tied=False,
    ),
}
FORMATS = tuple(dict.fromkeys(f for f, _ in WRITERS))
ONNX_FLAVORS = tuple(flavor for f, flavor in WRITERS if f == "onnx")
KV_SAMPLES, KV_WINDOW = 8, 256  # calibration windows an int8 KV cache's scales are measured on


def _groups_said(recipe: Recipe, spec: ModelSpec) -> str:
    """The decoder layers' blocks for the progress line: "g128", "g128 (g64 on 576-wide inputs)" or
    "g128 (576-wide inputs padded)"."""
    widths = sorted({shape[1] for name, shape in weight_shapes(spec).items() if len(shape) == 2 and name != EMBED})
    said = []
    for k in widths:
        group = layer_group(k, recipe.group_size, recipe.whole_groups)
        if group != recipe.group_size:
            said.append(f"g{group} on {k}-wide inputs")
        elif k % group:
            said.append(f"{k}-wide inputs padded")
    return f"g{recipe.group_size}" + (f" ({', '.join(said)})" if said else "")


def profile_recipe(settings: ExportSettings) -> Recipe:
    """The quantization recipe a device profile's [export] table asks for."""
    return replace(
        DEFAULT_RECIPE,
        algorithm=settings.algorithm,
        bits=settings.bits,
        group_size=settings.group_size,
        symmetric=settings.symmetric,
        embedding_bits=settings.embedding_bits,
        lm_head_bits=settings.lm_head_bits,
        edge_down_bits=settings.edge_down_bits or None,
        key_bits=settings.key_bits or None,
        rotate_residual=settings.rotate_residual,
        whole_groups=settings.whole_groups,
    )


def _kind(artifact_format: str, flavor: str | None) -> str:
    return f"{artifact_format} {flavor}" if flavor else artifact_format


def _kinds_where(takes: Callable[[Writer], bool]) -> str:
    """The kinds of artifact whose writer `takes` something, for an error naming where it is made."""
    return ", ".join(_kind(f, v) for (f, v), w in WRITERS.items() if takes(w))


def plan_export(
    profile: str | Path | DeviceProfile | None,
    artifact_format: str | None,
    flavor: str | None,
    recipe: Recipe | None,
    calibration: str | Path | None,
    max_context: int | None,
    accuracy_level: int | None,
    kv_bits: int | None = None,
) -> tuple[ExportPlan, Writer]:
    """The settings an export runs with, checked, and the writer of its kind of artifact."""
    if profile is not None and not isinstance(profile, DeviceProfile):
        profile = load_profile(profile)
    settings = profile.export if profile else ExportSettings(max_context=0)
    artifact_format = artifact_format or settings.format
    if artifact_format not in FORMATS:
        raise EdgekitError(f"format '{artifact_format}' is not supported; supported: {', '.join(FORMATS)}")
    if artifact_format == "mlx" and flavor is not None:
        raise EdgekitError(f"flavor '{flavor}' applies to ONNX artifacts; MLX artifacts have no flavor")
    if artifact_format == "onnx":
        flavor = flavor or settings.flavor
    writer = WRITERS.get((artifact_format, flavor))
    if writer is None:
        raise EdgekitError(f"flavor '{flavor}' is not supported; supported: {', '.join(ONNX_FLAVORS)}")
    kind = _kind(artifact_format, flavor)
    recipe = recipe or (profile_recipe(settings) if profile else DEFAULT_RECIPE)
    if writer.whole_groups:
        recipe = replace(recipe, whole_groups=True)
    if recipe.rotate_residual and not writer.rotation:
        raise EdgekitError(
            f"rotate_residual: a {kind} artifact cannot carry a rotated residual stream yet; "
            "export it to onnx cpu or cuda or to mlx, or leave rotate_residual off"
        )
    unread = sorted(recipe.code_bits() - set(writer.code_bits))
    if unread:
        readers = _kinds_where(lambda w: unread[0] in w.code_bits)
        raise EdgekitError(
            f"{unread[0]}-bit weights: a {kind} artifact's kernels read {' or '.join(map(str, writer.code_bits))}-bit "
            f"codes; {unread[0]}-bit codes are made for {readers}"
        )
    writer.require(None)
    accuracy_level = settings.accuracy_level if accuracy_level is None else accuracy_level
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise EdgekitError(f"accuracy level {accuracy_level} is not one of 0-4")
    max_context = max_context or settings.max_context or None
    kv_bits = settings.kv_bits if kv_bits is None else kv_bits
    if kv_bits not in writer.kv_bits:
        kinds = _kinds_where(lambda w: 8 in w.kv_bits)
        raise EdgekitError(
            f"kv_bits={kv_bits}: a {kind} artifact takes kv_bits {' or '.join(map(str, writer.kv_bits))} "
            f"(0: a float KV cache, 8: int8); an int8 KV cache is made for {kinds}"
        )
    plan = ExportPlan(
        artifact_format, flavor, recipe, calibration, max_context, accuracy_level, profile, settings, kv_bits
    )
    return plan, writer


def export(
    source: str | Path,
    output: str | Path,
    *,
    profile: str | Path | DeviceProfile | None = None,
    format: str | None = None,  # noqa: A002 - the CLI's --format and the manifest's field
    flavor: str | None = None,
    recipe: Recipe | None = None,
    calibration: str | Path | None = None,
    max_context: int | None = None,
    accuracy_level: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    stage: Note | None = None,
    via: str | None = None,
    qad: TrainConfig | None = None,
    kv_bits: int | None = None,
    layer_tune_steps: int | None = None,
) -> ExportResult:
    """Export SOURCE (HF folder, GGUF file or hub id) to an artifact folder at OUTPUT.

    profile: a device profile (name, .toml path or DeviceProfile) whose [export] table gives the
    defaults; every other argument given overrides it. Without a profile: ONNX, cpu flavor, the
    default recipe, the model's full context.

    via: "native" (edgekit's graph builder, the native families), "optimum" (any architecture
    optimum exports), or None: native, and optimum for an architecture the native builder does not
    know, when the optimum extra is installed.

    qad: a distill.train.TrainConfig to run quantization-aware distillation after quantizing
    (extra `distill`): scales, float zero points and norms trained toward the unquantized model on
    the calibration text.

    layer_tune_steps: after GPTQ rounds each decoder layer, train its scales this many steps toward
    the float layer's output on the calibration text (extra `distill`; distill/layer_tune.py).

    kv_bits: 8 keeps the KV cache in int8 (default: the profile's): in the ONNX graph with per
    head and channel scales measured on the calibration text, in the MLX runtime with per-position
    scales per group of channels; the manifest records it.
    """
    plan, writer = plan_export(profile, format, flavor, recipe, calibration, max_context, accuracy_level, kv_bits)
    if via not in (None, *VIAS):
        raise EdgekitError(f"export path '{via}' is not one of {', '.join(VIAS)}")
    if layer_tune_steps is not None and layer_tune_steps < 1:
        raise EdgekitError(f"layer_tune_steps={layer_tune_steps}: give a number of steps of at least 1")
    if layer_tune_steps and not plan.recipe.needs_calibration:
        raise EdgekitError(
            f"layer tuning trains toward the float layers on calibration text, which the {plan.recipe.algorithm} "
            "algorithm does not read; use awq-gptq, gptq or awq, or leave out layer tuning"
        )
    note = stage or (lambda message: None)
    start = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    checkpoint = None if via == "optimum" else _open_native(source, via, note)
    if checkpoint is None:
        if qad is not None or layer_tune_steps:
            raise EdgekitError(
                "quantization-aware distillation and layer tuning train edgekit's model of the native families, "
                "which does not cover an export through optimum; leave them out of it"
            )
        if plan.recipe.overrides:
            raise EdgekitError(
                f"per-weight bits ({', '.join(plan.recipe.overrides)}) name the checkpoint's weights, which an "
                "export through optimum does not carry; leave --tensor-bits out of it"
            )
        return _export_via_optimum(source, output, plan, overwrite, progress, note)
    writer.require(checkpoint.spec.family)
    plan.recipe.check_overrides(weight_shapes(checkpoint.spec))
    if qad is not None or layer_tune_steps:
        require("torch", "distill")
    if calibration is not None:
        read_text(calibration)  # a bad file is one line before any work, whichever step reads it later
    recipe = plan.recipe.with_rotation(
        writer.rotation and (writer.rotates_tied or not checkpoint.spec.tie_word_embeddings)
    )
    limit = checkpoint.spec.max_position_embeddings
    context = min(plan.max_context or limit, limit)
    sequences = None
    if recipe.needs_calibration:
        note(f"calibration data: {calibration or 'samples generated by the model'}")
        sequences = calibration_sequences(
            checkpoint, recipe.calibration_window, recipe.calibration_samples, calibration
        )
    kv_calibration = plan.kv_bits and writer.kv_scales
    if kv_calibration and sequences is None:
        note(f"KV cache scales from: {calibration or 'samples generated by the model'}")
        sequences = calibration_sequences(checkpoint, KV_WINDOW, KV_SAMPLES, calibration)
    tokenizer = checkpoint.tokenizer.load()
    prompt = tokenizer.encode("The capital of France is Paris. The capital of Italy is").ids[:16] or [0]
    output.parent.mkdir(parents=True, exist_ok=True)
    with SpilledTensors(output.parent) as spilled, staging(output, overwrite) as folder:
        rotated = ", the residual stream rotated" if recipe.rotate_residual else ""
        groups = _groups_said(recipe, checkpoint.spec)
        note(f"quantizing {checkpoint.name}: {recipe.algorithm} {recipe.bits}-bit {groups}{rotated}")
        tuner = _layer_tuner(checkpoint, layer_tune_steps, note)
        qm = quantize_checkpoint(checkpoint, recipe, sequences, progress, into=spilled, tune_layer=tuner)
        release_freed_memory()
        qad_record = None
        if qad is not None:
            qad_record = _distill(
                checkpoint, qm, _qad_text(checkpoint, qad, calibration, progress, note), qad, progress, note
            )
        kv_text = sequences[:KV_SAMPLES] if kv_calibration and sequences else None
        written = writer.write(WriteJob(folder, checkpoint, qm, plan, context, prompt, note, kv_text))
        Manifest(
            format=plan.format,
            flavor=plan.flavor,
            max_context=written.context,
            source=SourceRecord(checkpoint.source, checkpoint.format, checkpoint.name),
            quantization=QuantizationRecord(
                {**recipe.to_dict(), "qad": qad_record, "layer_tune": tuner.record() if tuner else None},
                qm.records,
                qm.bits_per_weight,
                qm.nbytes,
            ),
            verify=written.verify,
            spec=checkpoint.spec,
            profile=plan.profile.name if plan.profile else None,
            accuracy_level=plan.accuracy_level if plan.format == "onnx" else None,
            kv_bits=plan.kv_bits or None,
            eos_token_ids=tuple(checkpoint.eos_token_ids),
            npu=written.npu,
        ).write(folder)
        megabytes = folder_megabytes(folder)
    return ExportResult(output, time.perf_counter() - start, megabytes, qm.bits_per_weight, written.verify)


def _layer_tuner(checkpoint: Checkpoint, steps: int | None, note: Note) -> LayerTuner | None:
    if not steps:
        return None
    from ..distill.layer_tune import LayerTuner

    note(f"tuning each layer's scales: {steps} steps toward the float layer")
    return LayerTuner(checkpoint.spec, steps)


def _open_native(source: str | Path, via: str | None, note: Note) -> Checkpoint | None:
    """The checkpoint for the native builder, or None to go through optimum: an architecture it does
    not know, with `via` left open and the optimum extra installed."""
    try:
        return open_checkpoint(source)
    except UnsupportedArchitectureError as exc:
        if via == "native":
            raise
        if not _optimum_installed():
            raise UnsupportedArchitectureError(
                f"{exc}; other architectures export through optimum: pip install 'edgekit[optimum]'"
            ) from None
        note(f"notice: {exc}; exporting through optimum instead")
        return None


# tokens per QAD window: batches of 4 x 128, each window seen once, made QAD pay on SmolLM2
# (bench/results/distill_qad.json)
QAD_WINDOW = 128
QAD_HELD_OUT = 8  # one window in this many held out: QAD keeps its best step by them and reports them


def _qad_text(
    checkpoint: Checkpoint, qad: TrainConfig, calibration: str | Path | None, progress: Progress | None, note: Note
) -> list[list[int]]:
    """QAD's own text: a window for each sequence of each step and a seventh more, the last eighth
    of the whole held out (_distill), each seen once — from the calibration file (fewer where it is
    shorter), else sampled from the model. Without a file, 60 steps on fresh samples lowered
    SmolLM2's held-out KL more than 60 steps on the 16 calibration sequences (README, Distillation)."""
    trained = qad.steps * qad.batch_size
    count = trained + max(1, trained // (QAD_HELD_OUT - 1))
    window = min(QAD_WINDOW, checkpoint.spec.max_position_embeddings)
    note(f"QAD text: {count} windows of {window} tokens from {calibration or 'samples generated by the model'}")
    shown = progress and (lambda done, total: progress(done, total, "sampling QAD text"))
    return calibration_sequences(checkpoint, window, count, calibration, progress=shown or None)


def _distill(
    checkpoint: Checkpoint,
    qm: QuantizedModel,
    sequences: list[list[int]],
    qad: TrainConfig,
    progress: Progress | None,
    note: Note,
) -> dict[str, Any]:
    """Quantization-aware distillation of `qm` in place, on all but the last eighth of `sequences` (held out
    to keep the best step and report what it changed); returns the manifest's record of it."""
    from ..distill.qad import quantization_aware_distill

    note(f"quantization-aware distillation: {qad.steps} steps")
    shown = progress and (lambda step, total, info: progress(step, total, f"QAD loss {info['loss']:.4f}"))
    held_out = sequences[-max(1, len(sequences) // QAD_HELD_OUT) :] if len(sequences) > 1 else []
    train_on = sequences[: len(sequences) - len(held_out)]
    record = quantization_aware_distill(checkpoint, qm, train_on, qad, held_out=held_out, progress=shown or None)
    if held_out:
        before, after = record["held_out_before"], record["held_out_after"]
        note(
            f"QAD on {len(held_out)} held-out windows of its text: perplexity {before['perplexity']:.2f} -> "
            f"{after['perplexity']:.2f}, KL to the unquantized model {before['kl']:.4f} -> {after['kl']:.4f}"
        )
    return record


def _optimum_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("optimum.exporters.onnx") is not None
    except ImportError:
        return False


def _export_via_optimum(
    source: str | Path, output: Path, plan: ExportPlan, overwrite: bool, progress: Progress | None, note: Note
) -> ExportResult:
    from .optimum import ALGORITHMS, export_via_optimum

    if plan.format != "onnx" or plan.flavor != "cpu":
        raise EdgekitError(
            f"the optimum path writes ONNX artifacts of the cpu flavor, not {plan.format}/{plan.flavor}; "
            "pass --format onnx --flavor cpu (or a cpu profile)"
        )
    if plan.recipe.rotate_residual:
        raise EdgekitError(
            "rotate_residual: the optimum path cannot rotate the residual stream of a graph it did not build; "
            "leave rotate_residual off"
        )
    recipe = plan.recipe.with_rotation(False)
    if recipe.algorithm not in ALGORITHMS:  # AWQ folds scales into the norms of the native families
        algorithm = "gptq" if plan.calibration else "hqq"
        note(f"notice: {recipe.algorithm} needs a native family; quantizing with {algorithm}")
        recipe = replace(recipe, algorithm=algorithm)
    return export_via_optimum(
        source,
        output,
        recipe=recipe,
        calibration=plan.calibration,
        max_context=plan.max_context,
        accuracy_level=plan.accuracy_level,
        overwrite=overwrite,
        progress=progress,
        stage=note,
    )
