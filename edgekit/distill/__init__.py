"""Distillation (extra `distill`: torch): a smaller student trained toward its teacher, written as a
Hugging Face folder every edgekit command reads; and quantization-aware distillation of an INT4
model toward its unquantized original (qad.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgekitError, require

Stage = Callable[[str], None]


@dataclass
class DistillResult:
    output: Path | None  # None on the processes of a torchrun other than rank 0
    layers: list[int]
    intermediate_size: int
    losses: list[float]
    before: dict[str, float] = field(default_factory=dict)  # held-out perplexity and KL, layer-dropped
    after: dict[str, float] = field(default_factory=dict)
    teacher: dict[str, float] = field(default_factory=dict)  # the teacher's held-out perplexity


def text_sequences(tokenizer: Any, paths: Sequence[str | Path], length: int) -> list[list[int]]:
    """Windows of `length` tokens from text files, or every .txt/.md file of a folder."""
    from ..quant.calibration import read_text, token_windows

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".md") and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise EdgekitError(f"{p}: no such file or folder; --data takes text files or folders of them")
    if not files:
        raise EdgekitError(f"{', '.join(map(str, paths))}: no .txt or .md files to train on")
    ids: list[int] = []
    for f in files:
        ids += tokenizer.encode(read_text(f)).ids
    windows = [w for w in token_windows(ids, length) if len(w) == length]
    if len(windows) < 2:
        raise EdgekitError(f"the data has {len(ids)} tokens: too few for two windows of {length}; add text")
    return windows


def training_data(checkpoint: Any, data: Sequence[str | Path], length: int, samples: int, held_out: int, stage: Stage):
    """(train, held-out) token windows: from the data, or sampled from the teacher when none."""
    from ..quant.calibration import calibration_sequences

    if data:
        windows = text_sequences(checkpoint.tokenizer.load(), data, length)
        cut = max(1, min(held_out, len(windows) // 5))
        return windows[:-cut], windows[-cut:]
    stage(f"no --data: sampling {samples + held_out} sequences of {length} tokens from the teacher")
    windows = calibration_sequences(checkpoint, length, samples + held_out)
    return windows[:samples], windows[samples:]


def distill(
    teacher: str | Path,
    output: str | Path,
    *,
    layers: int | None = None,
    keep_layers: Sequence[int] | None = None,
    mlp_ratio: float = 1.0,
    data: Sequence[str | Path] = (),
    sequence_length: int = 128,
    samples: int = 64,
    held_out: int = 8,
    config: Any = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Any = None,
    stage: Stage | None = None,
) -> DistillResult:
    """Distill TEACHER (any source edgekit reads) into a student written as an HF folder at OUTPUT."""
    require("torch", "distill")
    from ..artifact import staging
    from ..sources import open_checkpoint
    from ..sources.hf_writer import as_stored
    from ..sources.safetensors_io import write_safetensors
    from ..spec import spec_from_config
    from .student import plan_student, student_config, student_weights
    from .torch_model import Decoder, Weights
    from .train import TrainConfig, distributed, train
    from .train import held_out as evaluate

    note = stage or (lambda message: None)
    config = config or TrainConfig()
    output = Path(output)
    rank, _ = distributed()
    if output.exists() and not overwrite and rank == 0:
        raise EdgekitError(f"{output} already exists; choose another output folder or pass --overwrite")
    checkpoint = open_checkpoint(teacher)
    plan = plan_student(checkpoint.spec, layers, keep_layers, mlp_ratio)
    config_json = student_config(checkpoint.config, plan)
    student_spec = spec_from_config(config_json)  # the student must be a model edgekit reads
    train_set, eval_set = training_data(checkpoint, data, sequence_length, samples, held_out, note)
    teacher_tensors = {name: checkpoint.tensors.get(name) for name in checkpoint.tensors}
    teacher_model = Decoder(checkpoint.spec, Weights(teacher_tensors, trainable=False), sequence_length)
    weights = Weights(student_weights(checkpoint.spec, teacher_tensors, plan))
    student = Decoder(student_spec, weights, sequence_length)
    result = DistillResult(None, plan.keep_layers, plan.intermediate_size, [])
    result.teacher = evaluate(teacher_model, teacher_model, eval_set)
    result.before = evaluate(student, teacher_model, eval_set)
    note(
        f"student: layers {plan.keep_layers} of {checkpoint.spec.num_layers}, MLP {plan.intermediate_size}; "
        f"held-out perplexity {result.before['perplexity']:.2f} (teacher {result.teacher['perplexity']:.2f})"
    )
    work = output.parent / f".{output.name}.distill"
    result.losses = train(
        student, teacher_model, list(weights.parameters()), train_set, config, work, resume=resume, progress=progress
    )
    result.after = evaluate(student, teacher_model, eval_set)
    if rank != 0:
        return result
    with staging(output, overwrite) as folder:
        record = {"teacher": str(teacher), **plan.to_dict(), "training": config.to_dict()}
        record |= {"held_out": {"before": result.before, "after": result.after, "teacher": result.teacher}}
        (folder / "config.json").write_text(json.dumps({**config_json, "edgekit_distillation": record}, indent=2))
        write_safetensors(folder / "model.safetensors", as_stored(student_spec, weights.to_numpy()))
        checkpoint.tokenizer.write(folder)
        open_checkpoint(folder)  # the student reads back as a model before it is put in place
    shutil.rmtree(work, ignore_errors=True)
    result.output = output
    return result
