"""`edgekit distill`: a smaller student trained toward its teacher (extra `distill`, torch)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import EdgekitError
from .app import cli


def training_options(command: Any) -> Any:
    """The training loop's settings."""
    options = [
        click.option("--steps", default=200, show_default=True, type=click.IntRange(1), help="Optimizer steps."),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Sequences per step."),
        click.option("--accumulation", default=1, show_default=True, type=click.IntRange(1), help="Micro-batches."),
        click.option("--lr", "learning_rate", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True)),
        click.option("--warmup", default=10, show_default=True, type=click.IntRange(0)),
        click.option("--temperature", default=2.0, show_default=True, type=click.FloatRange(0, min_open=True)),
        click.option("--ce-weight", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of CE."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def train_config(values: dict[str, Any], **extra: Any):
    from ..distill.train import TrainConfig

    keys = ("steps", "batch_size", "accumulation", "learning_rate", "warmup", "temperature", "ce_weight")
    return TrainConfig(**{k: values.pop(k) for k in keys}, **extra)


class StepProgress:
    """A progress bar on stderr with the loss and tokens/s of the last step."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, step: int, total: int, info: dict[str, float]) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, item_show_func=lambda s: s)
            self.bar.__enter__()
            self.bar.update(step - 1)
        self.bar.update(1, f"loss {info['loss']:.4f}, {info['tokens_per_s']:.0f} tokens/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _layer_list(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer indices") from None


def _quality(label: str, q: dict[str, float]) -> str:
    return f"{label}: perplexity {q['perplexity']:.2f}, KL to the teacher {q['kl']:.4f} ({q['tokens']} tokens)"


@cli.command()
@click.argument("teacher")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Student folder (HF layout).")
@click.option("--layers", default=None, type=click.IntRange(1), help="Student depth: layers spread evenly.")
@click.option("--keep-layers", default=None, help="Exactly these teacher layers, e.g. 0,2,4,6.")
@click.option("--mlp-ratio", default=1.0, show_default=True, type=float, help="Student MLP width / teacher's.")
@click.option(
    "--data",
    multiple=True,
    type=click.Path(),
    help="Text files or folders of .txt/.md (repeatable); without it, text sampled from the teacher.",
)
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(8), help="Tokens per sequence.")
@click.option("--samples", default=64, show_default=True, type=click.IntRange(1), help="Sequences sampled (no --data).")
@click.option("--held-out", default=8, show_default=True, type=click.IntRange(1), help="Sequences kept for the eval.")
@training_options
@click.option("--checkpoint-every", default=50, show_default=True, type=click.IntRange(0), help="Steps; 0 = end only.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option(
    "--draft",
    "target",
    default=None,
    type=click.Path(file_okay=False),
    help="Make a draft model for this target artifact (exported from TEACHER): the student, an eighth of "
    "the layers unless --layers, is exported to OUTPUT with the target's format, flavor and recipe.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def distill(teacher: str, output: str, target: str | None, **values: Any) -> None:
    """Distill TEACHER (an HF folder or GGUF file) into a smaller student: KL to the teacher's
    logits at a temperature, AdamW with warmup and cosine decay. Runs unchanged under torchrun
    (DistributedDataParallel). The student is an HF folder every edgekit command accepts; with
    --draft TARGET it becomes an artifact like TARGET, a draft for speculative decoding
    (`edgekit run TARGET --draft OUTPUT`)."""
    from ..distill import distill as run

    config = train_config(values, checkpoint_every=values.pop("checkpoint_every"))
    manifest = None
    student = output
    if target is not None:
        from ..artifact import read_manifest
        from ..distill.student import draft_depth
        from ..sources import open_checkpoint

        manifest = read_manifest(target, check_files=False)
        if Path(output).exists() and not values["overwrite"]:
            raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
        if values["layers"] is None and values["keep_layers"] is None:
            values["layers"] = draft_depth(open_checkpoint(teacher).spec)
        student = str(Path(output).parent / f".{Path(output).name}.student")
    progress = StepProgress("distilling")
    try:
        result = run(
            teacher,
            student,
            layers=values["layers"],
            keep_layers=_layer_list(values["keep_layers"]),
            mlp_ratio=values["mlp_ratio"],
            data=values["data"],
            sequence_length=values["seq_len"],
            samples=values["samples"],
            held_out=values["held_out"],
            config=config,
            resume=values["resume"],
            overwrite=values["overwrite"] or manifest is not None,
            progress=progress,
            stage=lambda message: click.echo(message, err=True),
        )
    finally:
        progress.close()
    if result.output is None:  # a torchrun process other than the first
        return
    click.echo(_quality("teacher", result.teacher))
    click.echo(_quality("student before", result.before))
    click.echo(_quality("student after ", result.after))
    if manifest is None:
        click.echo(f"wrote {result.output}: layers {result.layers}, MLP {result.intermediate_size}")
        return
    from ..exporters.pipeline import export
    from ..quant.recipe import Recipe

    try:
        exported = export(
            result.output,
            output,
            format=manifest.format,
            flavor=manifest.flavor,
            recipe=Recipe.from_record(manifest.quantization.recipe),
            max_context=manifest.max_context,
            accuracy_level=manifest.accuracy_level,
            overwrite=values["overwrite"],
            stage=lambda message: click.echo(message, err=True),
        )
    finally:
        shutil.rmtree(result.output, ignore_errors=True)
    click.echo(
        f"wrote draft {exported.output}: layers {result.layers}, {exported.megabytes:.1f} MB, "
        f"the recipe of {target}; use it with `edgekit run {target} --draft {exported.output}`"
    )
