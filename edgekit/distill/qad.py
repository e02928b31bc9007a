"""Quantization-aware distillation: an INT4 model's scales (and float zero points) and its norm
weights are trained to minimize KL against the unquantized model on calibration text. The codes
stay what the quantizer chose, so any algorithm's result is a starting point and the artifact
keeps its layout and kernels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from ..quant.pipeline import QuantizedModel
from ..sources.checkpoint import Checkpoint


def quantization_aware_distill(
    checkpoint: Checkpoint,
    qm: QuantizedModel,
    sequences: Sequence[Sequence[int]],
    config: Any,
    *,
    held_out: Sequence[Sequence[int]] = (),
    progress: Any = None,
    scored: Any = None,
    rounding_lr: float = 0.0,
) -> dict[str, Any]:
    """Trains `qm` in place; returns the record kept in the manifest. With `held_out` sequences and
    `config.eval_every`, the held-out perplexity is taken every `eval_every` steps and the weights
    end as they were at its lowest (early stopping); `scored(step, {"perplexity", "kl", …})` sees
    each score. `rounding_lr` > 0 also learns each weight's rounding (torch_model.QuantizedWeight):
    codes may move to neighbouring levels, trained at this learning rate (code units, same schedule)."""
    import torch

    from .torch_model import Decoder, Weights, trainable_norms
    from .train import HeldOutScorer, train

    spec = qm.spec
    length = max(len(s) for s in sequences)
    sequences = [s for s in sequences if len(s) == length]
    teacher_tensors = {name: checkpoint.tensors.get(name) for name in checkpoint.tensors}
    teacher = Decoder(spec, Weights(teacher_tensors, trainable=False), max(length, *map(len, held_out or [[]])))
    weights = Weights(qm.dense, dict(qm.quantized.items()), trainable=False, rounding=rounding_lr > 0)
    norms = trainable_norms(weights)
    for p in norms:
        p.requires_grad_(True)
    modules = list(weights.quantized.values())
    offsets = [m.offsets for m in modules if m.offsets is not None]
    quantized_params = [p for m in modules for name, p in m.named_parameters() if name != "offsets"]
    groups: list[dict[str, Any]] = [{"params": [*quantized_params, *norms]}]
    if offsets:
        groups.append({"params": offsets, "lr_scale": rounding_lr / config.learning_rate})
    student = Decoder(spec, weights, teacher.cos.shape[0])
    scorer = HeldOutScorer(teacher, held_out) if held_out else None
    before = scorer(student) if scorer else {}
    history: list[dict[str, float]] = []

    def validate(step: int) -> float:
        result = scorer(student) if step else before  # type: ignore[misc]
        history.append({"step": step, **result})
        if scored:
            scored(step, result)
        return result["perplexity"]

    with TemporaryDirectory(prefix="edgekit-qad-") as work:
        losses = train(
            student,
            teacher,
            groups,
            sequences,
            config,
            Path(work),
            progress=progress,
            validate=validate if scorer else None,
        )
    after = scorer(student) if scorer else {}
    with torch.no_grad():
        for key, module in weights.quantized.items():
            qm.quantized[key.replace(":", ".")] = module.to_quantized()
        for key, p in weights.dense.items():
            name = key.replace(":", ".")
            if p.requires_grad:
                qm.dense[name] = p.detach().numpy().astype(np.float32).copy()
    qm.sizes.clear()
    changed = sum(int((m.levels().detach() != m.codes.float()).sum()) for m in modules) if offsets else 0
    record = {
        "trained": "scales, float zero points, norm weights" + (", rounding" if offsets else ""),
        "sequences": len(sequences),
        "sequence_length": length,
        "training": config.to_dict(),
        "steps_run": len(losses),
        "rounding_lr": rounding_lr,
        "codes_changed": changed,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "held_out_source_perplexity": scorer.teacher_perplexity if scorer else None,
        "held_out_before": before,
        "held_out_after": after,
    }
    if history:
        record["held_out_scores"] = history
        record["kept_step"] = min(history, key=lambda h: h["perplexity"])["step"]
    return record


def qad_config(steps: int) -> Any:
    """The training settings `edgekit export --qad-steps` uses (measured on SmolLM2: bench/distill_smollm2.py):
    the held-out calibration windows are scored every tenth of the run and the best weights kept."""
    from .train import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=4,
        learning_rate=QAD_LEARNING_RATE,
        warmup=min(10, steps // 10),
        temperature=1.0,
        eval_every=max(1, steps // 10),
    )


QAD_LEARNING_RATE = 1e-4
