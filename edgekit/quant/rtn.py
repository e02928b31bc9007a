"""Round to nearest: per-group min/max (asymmetric) or signed absmax (symmetric)."""

from __future__ import annotations

import numpy as np

from .tensor import QuantizedTensor, from_params, grouped, minmax_params


def quantize_rtn(w: np.ndarray, bits: int = 4, group_size: int = 32, symmetric: bool = False) -> QuantizedTensor:
    scales, zeros = minmax_params(grouped(w, group_size), bits, symmetric)
    return from_params(w, scales, zeros, bits, group_size, "rtn")
