"""Commands about models: inspect, export, eval."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import EdgekitError
from .app import cli


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _describe(checkpoint) -> dict[str, Any]:
    spec = checkpoint.spec
    tok = checkpoint.tokenizer
    return {
        "source": checkpoint.source,
        "format": checkpoint.format,
        "name": checkpoint.name,
        "architecture": spec.architecture,
        "spec": spec.to_dict(),
        "parameters": checkpoint.parameter_count,
        "size_on_disk": checkpoint.size_on_disk,
        "dtypes": checkpoint.dtypes,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.load().get_vocab_size()},
        "chat_template": tok.chat_template is not None,
        "eos_token_ids": list(checkpoint.eos_token_ids),
    }


_ROPE_KEYS = {
    "none": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position"),
    "yarn": ("factor", "original_max_position", "beta_fast", "beta_slow", "attention_factor"),
}


def _rope_summary(rope: dict[str, Any]) -> str:
    parts = [f"theta={rope['theta']:g}", f"scaling={rope['scaling']}"]
    parts += [f"{k}={rope[k]}" for k in _ROPE_KEYS[rope["scaling"]] if rope[k] is not None]
    if rope["partial_rotary_factor"] != 1.0:
        parts.append(f"partial_rotary_factor={rope['partial_rotary_factor']}")
    if rope["freq_factors"] is not None:
        parts.append(f"per-frequency factors from the file ({len(rope['freq_factors'])})")
    return ", ".join(parts)


@cli.command()
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect(source: str, as_json: bool) -> None:
    """Describe a model: architecture, spec, parameters, size, tokenizer, chat template.

    SOURCE is a Hugging Face model folder, a .gguf file, or a hub id.
    """
    from ..sources import open_checkpoint

    info = _describe(open_checkpoint(source))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    spec = info["spec"]
    rope = spec.pop("rope")
    dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items()))
    rows = [
        ("source", f"{info['source']} ({info['format']})"),
        ("name", info["name"]),
        ("architecture", f"{info['architecture']} (family {spec['family']})"),
        ("parameters", f"{info['parameters'] / 1e6:.1f} M"),
        ("size on disk", f"{_human_bytes(info['size_on_disk'])} ({dtypes})"),
        ("tokenizer", f"{info['tokenizer']['kind']}, {info['tokenizer']['vocab_size']} tokens"),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("eos token ids", ", ".join(map(str, info["eos_token_ids"]))),
    ]
    rows += [(k, str(v)) for k, v in spec.items() if k not in ("family", "architecture")]
    rows.append(("rope", _rope_summary(rope)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def _tensor_bits(ctx, param, values: tuple[str, ...]) -> dict[str, int] | None:
    """--tensor-bits PATTERN=BITS, repeated: {pattern: bits}, None when not given."""
    chosen: dict[str, int] = {}
    for value in values:
        pattern, _, bits = value.rpartition("=")
        if not pattern or not bits.isdigit():
            raise click.BadParameter(f"'{value}' is not PATTERN=BITS, e.g. '*.gate_proj=4'")
        chosen[pattern] = int(bits)
    return chosen or None


# the recipe's fields the quantization options set; `tensor_bits` becomes per-weight overrides
RECIPE_OPTIONS = (
    "algorithm",
    "bits",
    "group_size",
    "symmetric",
    "embedding_bits",
    "edge_down_bits",
    "key_bits",
    "rotate_residual",
    "tensor_bits",
)


def recipe_options(command):
    """The quantization options `export` and `eval` share, each defaulting to the recipe's value, and
    --calibration. The command takes them as one dict, `recipe_changes` (None where not given)."""
    options = [
        click.option(
            "-a", "--algorithm", default=None, help="rtn, hqq, awq, gptq or awq-gptq [default: the recipe's]."
        ),
        click.option(
            "--bits",
            default=None,
            type=int,
            help="Bits of the transformer blocks: 4 or 8, for MLX also 5 or 6 [default: 4].",
        ),
        click.option("-g", "--group-size", default=None, type=int, help="Block size along K: 32, 64 or 128."),
        click.option("--symmetric/--asymmetric", default=None, help="Zero points or not [default: the recipe's]."),
        click.option("--embedding-bits", default=None, type=int, help="Bits of the embedding / tied lm_head."),
        click.option(
            "--edge-down-bits",
            default=None,
            type=int,
            help="Bits of the MLP's down projection in the first and last eighth of the layers (4: as the rest) "
            "[default: 8; the Raspberry Pi and Snapdragon profiles: 4].",
        ),
        click.option(
            "--key-bits",
            default=None,
            type=int,
            help="Bits of the attention's key projection (k_proj) in every layer [default: as the rest]; "
            "8 keeps more of the model and costs decode speed (README, Quantization).",
        ),
        click.option(
            "--rotate-residual/--no-rotate-residual",
            default=None,
            help="Rotate the residual stream before quantizing (exact) [default: on where GPTQ rounds an ONNX "
            "cpu/cuda export or an MLX export of an untied model; off for rtn/hqq/awq, npu and a tied model's "
            "MLX export, which mlx-lm then cannot load].",
        ),
        click.option(
            "--tensor-bits",
            multiple=True,
            metavar="PATTERN=BITS",
            callback=_tensor_bits,
            help="Bits of the weights whose names match a glob, over the options above, e.g. "
            "'*.gate_proj=4' or 'model.layers.0.*=8' (repeatable; names as in the HF checkpoint).",
        ),
        click.option(
            "--calibration",
            default=None,
            type=click.Path(dir_okay=False),
            help="Calibration text; without it, text sampled from the model itself.",
        ),
    ]

    @functools.wraps(command)
    def with_changes(*args: Any, **kwargs: Any) -> Any:
        changes = {name: kwargs.pop(name) for name in RECIPE_OPTIONS}
        return command(*args, recipe_changes=changes, **kwargs)

    for option in reversed(options):
        with_changes = option(with_changes)
    return with_changes


def _recipe(base, changes: dict[str, Any]):
    """`base` with the options given (recipe_options) applied."""
    from dataclasses import replace

    given = {k: v for k, v in changes.items() if v is not None}
    tensor_bits = given.pop("tensor_bits", {})
    if tensor_bits:
        overrides = dict(base.overrides)
        for pattern, b in tensor_bits.items():
            overrides[pattern] = {**overrides.get(pattern, {}), "bits": b}
        given["overrides"] = overrides
    return replace(base, **given)


def _echo(message: str) -> None:
    click.echo(message, err=True)


@contextlib.contextmanager
def _removed(folder: Path):
    """Remove `folder` (an intermediate student) when the block ends, however it ends."""
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _LayerProgress:
    """A progress bar on stderr fed by the quantizer's (step, total, what) callback."""

    bar = None  # started by the first layer, so an error before quantizing prints no bar

    def __enter__(self):
        return self

    def __call__(self, step: int, total: int, what: str) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="quantizing", file=sys.stderr, item_show_func=lambda w: w)
            self.bar.__enter__()
        self.bar.update(step - self.bar.pos, what)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


@cli.command()
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Artifact folder to create.")
@click.option(
    "--profile",
    default=None,
    help="Device profile to export for: a name from `edgekit devices`, a .toml file, or 'auto' for this "
    "machine. Its [export] table sets the defaults below.",
)
@click.option("--format", "fmt", default=None, type=click.Choice(["onnx", "mlx"]), help="[default: onnx]")
@click.option("--flavor", default=None, type=click.Choice(["cpu", "cuda", "npu"]), help="[default: cpu]")
@recipe_options
@click.option(
    "--max-context",
    default=None,
    type=click.IntRange(16),
    help="Longest sequence the artifact supports (rotary tables and KV cache) [default: the profile's, else "
    "the model's].",
)
@click.option(
    "--accuracy-level",
    default=None,
    type=click.IntRange(0, 4),
    help="MatMulNBits compute: 4 = int8 activations (fast on CPU), 0 = float32 [default: 4].",
)
@click.option(
    "--kv-bits",
    default=None,
    type=click.Choice(["0", "8"]),
    help="8 keeps the KV cache in int8 (ONNX cpu/cuda: per head and channel scales from the calibration "
    "text; MLX: per-position scales per group of channels), 0 in float [default: the profile's; 8 on the "
    "Raspberry Pi profiles].",
)
@click.option(
    "--via",
    default=None,
    type=click.Choice(["native", "optimum"]),
    help="Graph builder: edgekit's own (llama, mistral, qwen2, qwen3, phi3) or optimum's (any architecture; "
    "extra 'optimum') [default: native, optimum for other architectures when installed].",
)
@click.option(
    "--distill-layers",
    default=None,
    type=click.IntRange(1),
    help="First distill SOURCE into a student of this many layers (extra 'distill'; `edgekit distill` has "
    "every training option).",
)
@click.option("--distill-steps", default=200, show_default=True, type=click.IntRange(1), help="With --distill-layers.")
@click.option(
    "--qad-steps",
    default=None,
    type=click.IntRange(1),
    help="Quantization-aware distillation after quantizing: train scales and norms this many steps toward "
    "the unquantized model on the calibration text (extra 'distill').",
)
@click.option(
    "--layer-tune-steps",
    default=None,
    type=click.IntRange(1),
    help="After GPTQ rounds each decoder layer, train its scales this many steps so that it reproduces the "
    "float layer on the calibration text (extra 'distill'; 10 steps add about 70 s on SmolLM2-135M).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def export(
    source: str,
    output: str,
    profile: str | None,
    fmt: str | None,
    flavor: str | None,
    recipe_changes: dict[str, Any],
    calibration: str | None,
    max_context: int | None,
    accuracy_level: int | None,
    kv_bits: str | None,
    via: str | None,
    distill_layers: int | None,
    distill_steps: int,
    qad_steps: int | None,
    layer_tune_steps: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Quantize SOURCE and write a verified artifact folder for one device."""
    from ..device_profiles import load_profile
    from ..exporters.pipeline import export as run_export
    from ..exporters.pipeline import profile_recipe
    from ..quant.recipe import DEFAULT_RECIPE

    chosen = load_profile(profile) if profile else None
    base = profile_recipe(chosen.export) if chosen else DEFAULT_RECIPE
    recipe = _recipe(base, recipe_changes)
    qad = None
    if qad_steps:
        from ..distill.qad import qad_config

        qad = qad_config(qad_steps)
    student = Path(output).parent / f".{Path(output).name}.student"
    if distill_layers:
        from ..distill import distill
        from ..distill.train import TrainConfig
        from .distill import StepProgress

        steps = StepProgress("distilling")
        config = TrainConfig(steps=distill_steps)
        try:
            distill(source, student, layers=distill_layers, config=config, overwrite=True, progress=steps, stage=_echo)
        finally:
            steps.close()
        source = str(student)
    with _LayerProgress() as progress, _removed(student):
        result = run_export(
            source,
            output,
            profile=chosen,
            format=fmt,
            flavor=flavor,
            recipe=recipe,
            calibration=calibration,
            max_context=max_context,
            accuracy_level=accuracy_level,
            overwrite=overwrite,
            progress=progress,
            stage=lambda message: click.echo(f"\n{message}", err=True),
            via=via,
            qad=qad,
            kv_bits=None if kv_bits is None else int(kv_bits),
            layer_tune_steps=layer_tune_steps,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    verify = result.verify

    def agreement(check: dict) -> str:
        return (
            f"logits within {check['max_rel_error']:.1e} of the reference (tolerance {check['tolerance']:.2g}), "
            f"top-1 agreement {check['top1_agreement']:.0%}"
        )

    checked = agreement(verify) if verify.get("checked") else verify.get("reason")
    click.echo(
        f"wrote {result.output}: {result.megabytes:.1f} MB, {result.bits_per_weight:.2f} bits/weight, "
        f"{result.seconds:.0f} s\nverify: {checked}"
    )
    if "int8_kv_cache" in verify:
        click.echo(f"verify, int8 KV cache: {agreement(verify['int8_kv_cache'])}")
    deployed = verify.get("int8_compute")
    if deployed:
        click.echo(f"as deployed, int8 compute on this CPU: {agreement(deployed)}")
        if deployed["max_rel_error"] > deployed["tolerance"]:
            click.echo(
                "warning: ONNX Runtime's int8 kernels on this CPU move this artifact's logits "
                f"{deployed['max_rel_error']:.1e} of the largest from its weights' own; a calibrated "
                "recipe (the default awq-gptq) or --accuracy-level 0 (float32 compute) keeps them closer",
                err=True,
            )


@cli.command("eval")
@click.argument("source")
@click.option(
    "--text",
    "text_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Text to measure perplexity on (UTF-8), not used for calibration.",
)
@click.option("--source-only", is_flag=True, help="Evaluate the source alone, without quantizing it.")
@click.option(
    "--source",
    "source_path",
    type=click.Path(),
    help="For an artifact: the checkpoint it was exported from, when not where its manifest says.",
)
@recipe_options
@click.option("--window", default=256, show_default=True, type=click.IntRange(8), help="Tokens per window.")
@click.option("--max-windows", default=8, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def eval_command(
    source: str,
    text_path: str,
    source_only: bool,
    source_path: str | None,
    recipe_changes: dict[str, Any],
    calibration: str | None,
    window: int,
    max_windows: int,
    as_json: bool,
) -> None:
    """Perplexity of SOURCE on a text, and of its INT4 quantization: KL divergence and top-1
    agreement against the source, bits per weight, size. A checkpoint is quantized here and
    evaluated with the numpy reference; an exported artifact is evaluated as deployed, through its
    own runtime (ONNX Runtime's kernels, MLX), against the checkpoint it was exported from."""
    from ..artifact import is_artifact
    from ..evaluate import evaluate
    from ..quant.calibration import calibration_sequences, read_text, token_windows
    from ..quant.pipeline import quantize_checkpoint
    from ..quant.recipe import DEFAULT_RECIPE
    from ..reference import ReferenceModel
    from ..sources import open_checkpoint

    recipe_given = calibration is not None or any(v is not None for v in recipe_changes.values())
    if is_artifact(Path(source)):
        if recipe_given or source_only:
            raise EdgekitError(
                f"{source} is an exported artifact, evaluated as it was exported: quantization options and "
                "--source-only apply to a source checkpoint"
            )
        rows = _evaluate_artifact(Path(source), source_path, read_text(text_path), window, max_windows, text_path)
        _print_quality(rows, as_json)
        return
    if source_path is not None:
        raise EdgekitError(f"--source names an artifact's checkpoint; {source} is not an artifact folder")
    checkpoint = open_checkpoint(source)
    windows = token_windows(checkpoint.tokenizer.load().encode(read_text(text_path)).ids, window, max_windows)
    # as the default export (ONNX cpu) quantizes: its runtime applies a rotated residual stream
    recipe = None if source_only else _recipe(DEFAULT_RECIPE, recipe_changes).with_rotation(True)
    click.echo(f"evaluating {checkpoint.name} on {sum(len(w) for w in windows)} tokens of {text_path}", err=True)
    reference = ReferenceModel.from_checkpoint(checkpoint)
    rows = [
        {
            "model": "source",
            **evaluate(windows, reference.forward).to_dict(),
            "bits_per_weight": 8 * checkpoint.size_on_disk / checkpoint.parameter_count,
            "megabytes": checkpoint.size_on_disk / 1e6,
        }
    ]
    if recipe is not None:
        sequences = None
        if recipe.needs_calibration:
            where = calibration or "samples generated by the model"
            click.echo(f"calibrating on {where} ...", err=True)
            sequences = calibration_sequences(
                checkpoint, recipe.calibration_window, recipe.calibration_samples, calibration, reference
            )
        with _LayerProgress() as progress:
            quantized = quantize_checkpoint(checkpoint, recipe, sequences, progress)
        model = ReferenceModel(checkpoint.spec, quantized.weights())
        quality = evaluate(windows, model.forward, reference.forward)
        rows.append(
            {
                "model": f"{recipe.algorithm} {recipe.bits}-bit g{recipe.group_size}",
                **quality.to_dict(),
                "bits_per_weight": quantized.bits_per_weight,
                "megabytes": quantized.nbytes / 1e6,
                "quantize_seconds": quantized.seconds,
                "recipe": recipe.to_dict(),
            }
        )
    _print_quality(rows, as_json)


def _evaluate_artifact(
    folder: Path, source_path: str | None, text: str, window: int, max_windows: int, text_path: str
) -> list[dict[str, Any]]:
    """Rows for the source (numpy reference) and the artifact (its own runtime) on the same windows."""
    from ..artifact import folder_megabytes, read_manifest
    from ..evaluate import evaluate
    from ..generation.loader import load_runtime
    from ..quant.calibration import token_windows
    from ..reference import ReferenceModel
    from ..sources import open_checkpoint

    manifest = read_manifest(folder)
    if manifest.spec is None:
        raise EdgekitError(
            f"{folder}: a {manifest.model_type} artifact from the optimum path; its source has no native "
            "reference to compare with, so `edgekit eval` measures native-family artifacts only"
        )
    where = source_path or manifest.source.path
    if not Path(where).exists():
        raise EdgekitError(
            f"{folder}: its source {where} is not here; pass the checkpoint it was exported from with --source PATH"
        )
    checkpoint = open_checkpoint(where)
    if checkpoint.spec.to_dict() != manifest.spec.to_dict():
        raise EdgekitError(
            f"{where}: not the model {folder} was exported from (its spec differs); pass that checkpoint with --source"
        )
    if window > manifest.max_context:
        raise EdgekitError(f"--window {window} is longer than {folder}'s context of {manifest.max_context}")
    loaded = load_runtime(folder, max_context=window)
    ids = loaded.tokenizer.encode(text)
    if len(ids) < window:
        raise EdgekitError(
            f"{text_path}: {len(ids)} tokens, shorter than one window of {window}; "
            "pass a longer text or a smaller --window"
        )
    windows = token_windows(ids, window, max_windows)
    click.echo(f"evaluating {folder} ({loaded.backend}) on {sum(map(len, windows))} tokens of {text_path}", err=True)
    reference = ReferenceModel.from_checkpoint(checkpoint)
    quantization = manifest.quantization
    return [
        {
            "model": "source",
            **evaluate(windows, reference.forward).to_dict(),
            "bits_per_weight": 8 * checkpoint.size_on_disk / checkpoint.parameter_count,
            "megabytes": checkpoint.size_on_disk / 1e6,
        },
        {
            "model": f"{folder.name} ({loaded.backend})",
            **evaluate(windows, loaded.runtime.logits_all, reference.forward).to_dict(),
            "bits_per_weight": quantization.bits_per_weight,
            "megabytes": folder_megabytes(folder),
            "recipe": quantization.recipe,
        },
    ]


def _print_quality(rows: list[dict[str, Any]], as_json: bool) -> None:
    base = rows[0]["perplexity"]
    for row in rows:
        row["perplexity_ratio"] = row["perplexity"] / base
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo("| model | perplexity | x source | KL (nats) | top-1 | bits/weight | MB |")
    click.echo("|---|---|---|---|---|---|---|")
    for row in rows:
        kl = "" if row["kl"] is None else f"{row['kl']:.4f}"
        top1 = "" if row["top1"] is None else f"{row['top1']:.3f}"
        click.echo(
            f"| {row['model']} | {row['perplexity']:.3f} | {row['perplexity_ratio']:.3f} | {kl} | {top1} | "
            f"{row['bits_per_weight']:.2f} | {row['megabytes']:.1f} |"
        )
