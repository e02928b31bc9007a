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
) -> dict[str, Any]:
    """Trains `qm` in place; returns the record kept in the manifest."""
    import torch

    from .torch_model import Decoder, Weights, trainable_norms
    from .train import held_out as evaluate
    from .train import train

    spec = qm.spec
    length = max(len(s) for s in sequences)
    sequences = [s for s in sequences if len(s) == length]
    teacher_tensors = {name: checkpoint.tensors.get(name) for name in checkpoint.tensors}
    teacher = Decoder(spec, Weights(teacher_tensors, trainable=False), length)
    weights = Weights(qm.dense, dict(qm.quantized.items()), trainable=False)
    norms = trainable_norms(weights)
    for p in norms:
        p.requires_grad_(True)
    quantized_params = [p for module in weights.quantized.values() for p in module.parameters()]
    student = Decoder(spec, weights, length)
    before = evaluate(student, teacher, held_out) if held_out else {}
    with TemporaryDirectory(prefix="edgekit-qad-") as work:
        losses = train(student, teacher, [*quantized_params, *norms], sequences, config, Path(work), progress=progress)
    after = evaluate(student, teacher, held_out) if held_out else {}
    with torch.no_grad():
        for key, module in weights.quantized.items():
            qm.quantized[key.replace(":", ".")] = module.to_quantized()
        for key, p in weights.dense.items():
            name = key.replace(":", ".")
            if p.requires_grad:
                qm.dense[name] = p.detach().numpy().astype(np.float32).copy()
    qm.sizes.clear()
    return {
        "trained": "scales, float zero points, norm weights",
        "sequences": len(sequences),
        "sequence_length": length,
        "training": config.to_dict(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "held_out_before": before,
        "held_out_after": after,
    }


def qad_config(steps: int) -> Any:
    """The training settings `edgekit export --qad-steps` uses (measured on SmolLM2: bench/distill_smollm2.py)."""
    from .train import TrainConfig

    return TrainConfig(steps=steps, batch_size=4, learning_rate=QAD_LEARNING_RATE, warmup=min(10, steps // 10))


QAD_LEARNING_RATE = 1e-4
