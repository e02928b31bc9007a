"""export(): load -> quantize -> emit -> verify, into a temporary folder renamed into place."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..device_profiles import DeviceProfile, ExportSettings, load_profile
from ..errors import EdgekitError, UnsupportedArchitectureError, require
from ..quant.calibration import calibration_sequences
from ..quant.pipeline import Progress, quantize_checkpoint
from ..quant.recipe import DEFAULT_RECIPE, Recipe
from ..quant.spill import SpilledTensors
from ..sources import open_checkpoint
from .artifact import staging, write_manifest
from .mlx import verify_mlx, write_mlx
from .onnx import verify_onnx, write_onnx
from .onnx_decoder import FLAVORS, OnnxOptions

FORMATS = ("onnx", "mlx")
VIAS = ("native", "optimum")


@dataclass
class ExportResult:
    output: Path
    seconds: float
    megabytes: float
    bits_per_weight: float
    verify: dict[str, Any] = field(default_factory=dict)


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the system between export stages (glibc keeps what the
    quantizer's temporaries freed, and the next stage's ONNX Runtime session would come on top)."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries have none
    except (OSError, AttributeError, TypeError):
        return
    trim(0)


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
    )


def export(
    source: str | Path,
    output: str | Path,
    *,
    profile: str | Path | DeviceProfile | None = None,
    format: str | None = None,
    flavor: str | None = None,
    recipe: Recipe | None = None,
    calibration: str | Path | None = None,
    max_context: int | None = None,
    accuracy_level: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    stage: Any = None,
    via: str | None = None,
    qad: Any = None,
) -> ExportResult:
    """Export SOURCE (HF folder, GGUF file or hub id) to an artifact folder at OUTPUT.

    profile: a device profile (name, .toml path or DeviceProfile) whose [export] table gives the
    defaults; every other argument given overrides it. Without a profile: ONNX, cpu flavor, the
    default recipe, the model's full context.

    via: "native" (edgekit's graph builder, the five families), "optimum" (any architecture
    optimum exports), or None: native, and optimum for an architecture the native builder does not
    know, when the optimum extra is installed.

    qad: a distill.train.TrainConfig to run quantization-aware distillation after quantizing
    (extra `distill`): scales, float zero points and norms trained toward the unquantized model on
    the calibration text.
    """
    if profile is not None and not isinstance(profile, DeviceProfile):
        profile = load_profile(profile)
    settings = profile.export if profile else ExportSettings(max_context=0)
    format = format or settings.format
    if format != "mlx":
        flavor = flavor or settings.flavor
    recipe = recipe or (profile_recipe(settings) if profile else DEFAULT_RECIPE)
    max_context = max_context or settings.max_context or None
    accuracy_level = settings.accuracy_level if accuracy_level is None else accuracy_level
    if format not in FORMATS:
        raise EdgekitError(f"format '{format}' is not supported; supported: {', '.join(FORMATS)}")
    if format == "mlx":
        if flavor is not None:
            raise EdgekitError(f"flavor '{flavor}' applies to ONNX artifacts; MLX artifacts have no flavor")
        require("mlx.core", "mlx")  # the export ends by running the artifact
    elif flavor not in (*FLAVORS, "npu"):
        raise EdgekitError(f"flavor '{flavor}' is not supported; supported: {', '.join(FLAVORS)}, npu")
    elif flavor == "npu":
        from .onnx_npu import require_npu

        require_npu()  # onnxruntime-qnn: the export ends by running the graphs on QNN's HTP backend
    if format == "mlx" or flavor == "cuda":
        # MLX's groups must tile the row; padded blocks are only known to run in ONNX Runtime's CPU
        # kernels, and the cuda flavor has not run on a GPU here yet
        recipe = replace(recipe, whole_groups=True)
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise EdgekitError(f"accuracy level {accuracy_level} is not one of 0-4")
    if via not in (None, *VIAS):
        raise EdgekitError(f"export path '{via}' is not one of {', '.join(VIAS)}")
    note = stage or (lambda message: None)
    start = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    generic = {
        "format": format,
        "flavor": flavor,
        "recipe": recipe,
        "calibration": calibration,
        "max_context": max_context,
        "accuracy_level": accuracy_level,
        "overwrite": overwrite,
        "progress": progress,
        "stage": note,
    }
    if via == "optimum":
        return _export_via_optimum(source, output, **generic)
    try:
        checkpoint = open_checkpoint(source)
    except UnsupportedArchitectureError as exc:
        if via == "native":
            raise
        if not _optimum_installed():
            raise UnsupportedArchitectureError(
                f"{exc}; other architectures export through optimum: pip install 'edgekit[optimum]'"
            ) from None
        note(f"notice: {exc}; exporting through optimum instead")
        return _export_via_optimum(source, output, **generic)
    context = min(max_context or checkpoint.spec.max_position_embeddings, checkpoint.spec.max_position_embeddings)
    options = OnnxOptions(flavor=flavor or "cpu", max_context=context, accuracy_level=accuracy_level)
    if flavor == "npu":
        from .onnx_npu import npu_options, require_npu

        require_npu(checkpoint.spec.family)
        npu = npu_options(settings, profile.runtime.prefill_chunk if profile else None, max_context, context)
        context = npu.context
    if qad is not None:
        require("torch", "distill")
    sequences = None
    if recipe.needs_calibration or qad is not None:
        note(f"calibration data: {calibration or 'samples generated by the model'}")
        sequences = calibration_sequences(
            checkpoint, recipe.calibration_window, recipe.calibration_samples, calibration
        )
    tokenizer = checkpoint.tokenizer.load()
    prompt = tokenizer.encode("The capital of France is Paris. The capital of Italy is").ids[:16] or [0]
    output.parent.mkdir(parents=True, exist_ok=True)
    with SpilledTensors(output.parent) as spilled, staging(output, overwrite) as folder:
        note(f"quantizing {checkpoint.name}: {recipe.algorithm} {recipe.bits}-bit g{recipe.group_size}")
        qm = quantize_checkpoint(checkpoint, recipe, sequences, progress, into=spilled)
        release_freed_memory()
        qad_record = None
        if qad is not None:
            from ..distill.qad import quantization_aware_distill

            note(f"quantization-aware distillation: {qad.steps} steps on the calibration text")
            shown = progress and (lambda step, total, info: progress(step, total, f"QAD loss {info['loss']:.4f}"))
            held_out = sequences[-max(1, len(sequences) // 8) :] if len(sequences) > 1 else []
            train_on = sequences[: len(sequences) - len(held_out)]
            qad_record = quantization_aware_distill(
                checkpoint, qm, train_on, qad, held_out=held_out, progress=shown or None
            )
            if held_out:
                before, after = qad_record["held_out_before"], qad_record["held_out_after"]
                note(
                    f"QAD on {len(held_out)} held-out calibration sequences: perplexity {before['perplexity']:.2f} -> "
                    f"{after['perplexity']:.2f}, KL to the unquantized model {before['kl']:.4f} -> {after['kl']:.4f}"
                )
        if format == "mlx":
            note("writing the MLX weights")
            write_mlx(folder, checkpoint, qm)
            note("verifying against the numpy reference")
            result = verify_mlx(folder, checkpoint, qm, prompt)
        elif flavor == "npu":
            from .onnx_npu import export_npu

            result, npu_table = export_npu(folder, checkpoint, qm, npu, calibration, prompt, note)
        else:
            note("writing the ONNX graph")
            written = write_onnx(folder, checkpoint, qm, options)
            release_freed_memory()
            note("verifying against the numpy reference")
            result = verify_onnx(folder, checkpoint, qm, options, prompt, written)
        write_manifest(
            folder,
            {
                "format": format,
                "flavor": flavor,
                "profile": profile.name if profile else None,
                "spec": checkpoint.spec.to_dict(),
                "max_context": context,
                "accuracy_level": accuracy_level if format == "onnx" else None,
                "quantization": {
                    "recipe": {**recipe.to_dict(), "qad": qad_record},
                    "layers": qm.records,
                    "bits_per_weight": qm.bits_per_weight,
                    "weight_bytes": qm.nbytes,
                },
                "source": {"path": checkpoint.source, "format": checkpoint.format, "name": checkpoint.name},
                "eos_token_ids": list(checkpoint.eos_token_ids),
                "verify": result,
                **({"npu": npu_table} if flavor == "npu" else {}),
            },
        )
        size = sum(p.stat().st_size for p in folder.iterdir())
    return ExportResult(output, time.perf_counter() - start, size / 1e6, qm.bits_per_weight, result)


def _optimum_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("optimum.exporters.onnx") is not None
    except ImportError:
        return False


def _export_via_optimum(source: str | Path, output: Path, **options: Any) -> ExportResult:
    from .optimum import ALGORITHMS, export_via_optimum

    format, flavor, recipe = options.pop("format"), options.pop("flavor"), options.pop("recipe")
    if format != "onnx" or flavor != "cpu":
        raise EdgekitError(
            f"the optimum path writes ONNX artifacts of the cpu flavor, not {format}/{flavor}; "
            "pass --format onnx --flavor cpu (or a cpu profile)"
        )
    if recipe.algorithm not in ALGORITHMS:  # AWQ folds scales into the norms of the native families
        algorithm = "gptq" if options["calibration"] else "hqq"
        options["stage"](f"notice: {recipe.algorithm} needs a native family; quantizing with {algorithm}")
        recipe = replace(recipe, algorithm=algorithm)
    return export_via_optimum(source, output, recipe=recipe, **options)


def export_result_dict(result: ExportResult) -> dict[str, Any]:
    data = asdict(result)
    data["output"] = str(result.output)
    return data
