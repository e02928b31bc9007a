"""The npu artifact's own files: the prefill and decode QDQ graphs over one weight file, the int8
embedding table, the tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...quant.pipeline import QuantizedModel
from ...sources import Checkpoint
from .calibration import calibrate
from .decoder_graph import save_graph
from .layout import EMBEDDING, GRAPHS
from .options import NpuOptions
from .weight_formats import FORMATS
from .weights import NpuWeights, npu_weights


def write_npu(
    folder: Path, checkpoint: Checkpoint, qm: QuantizedModel, options: NpuOptions, sequences: list[list[int]]
) -> tuple[dict, NpuWeights]:
    """Returns the manifest's "npu" table and the weights (for verification)."""
    spec = checkpoint.spec
    bits = {name: record["bits"] for name, record in qm.records.items()}
    w = npu_weights(spec, qm.weights(), options.weight_format, bits)
    ranges = calibrate(folder, w, options, sequences)
    mask_value = ranges.pop("__mask_value__")[0]
    written: dict = {}
    save_graph(folder, GRAPHS["prefill"], w, options.chunk, options.context, ranges, written)
    save_graph(folder, GRAPHS["decode"], w, 1, options.context, ranges, written)
    np.save(folder / EMBEDDING["codes"], w.embedding[0])
    np.save(folder / EMBEDDING["scales"], w.embedding[1])
    checkpoint.tokenizer.write(folder)
    npu = {
        "context": options.context,
        "chunk": options.chunk,
        "mask_value": mask_value,
        "graphs": dict(GRAPHS),
        "embedding": dict(EMBEDDING),
        "weight_format": options.weight_format,
        "weights": FORMATS[options.weight_format].describe,
        "activations": "uint16 per tensor through QuantizeLinear/DequantizeLinear, calibrated",
        "calibration_sequences": len(sequences),
    }
    return npu, w
