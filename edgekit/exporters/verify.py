"""The check every export ends with: the artifact's runtime against the numpy reference on the same
weights, for a prompt and a few cached greedy decode steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..reference import ReferenceModel
from ..runtimes.base import Runtime
from ..spec import ModelSpec

TOLERANCE = 1e-3  # max |logit difference| over the largest |logit|
FLOAT16_TOLERANCE = 1e-2  # the same for a graph with float16 activations, KV cache and scales
KV8_TOLERANCE = 5e-2  # the same for a graph whose KV cache is int8 (per head and channel scales)
# the graph as deployed, int8 compute on this CPU's kernels: past this the export warns. On an
# AVX2-only host SmolLM2's default export measured 4.3e-2 here and answers well; round-to-nearest
# with every down projection at 4 bits 6.6e-2 here, 12.7e-2 at a chat prompt's last position, and
# answered nonsense. A max over a few positions is a coarse judge, so the bound is generous.
INT8_COMPUTE_WARNING = 1e-1


def run_greedy(runtime: Runtime, prompt: list[int], steps: int) -> tuple[list[int], np.ndarray]:
    """The prompt plus `steps` greedy tokens, and the logits [steps + 1, vocab] that chose them."""
    ids = list(prompt)
    got = [runtime.prefill(ids)]
    for _ in range(steps):
        token = int(np.argmax(got[-1]))
        ids.append(token)
        got.append(runtime.decode(token))
    return ids, np.stack(got)


def run_forced(runtime: Runtime, ids: list[int], prompt_length: int) -> np.ndarray:
    """run_greedy's logits with its tokens given: the prompt's last position, then each later id's."""
    got = [runtime.prefill(ids[:prompt_length])]
    got += [runtime.decode(token) for token in ids[prompt_length:]]
    return np.stack(got)


def reference_logits(
    ids: list[int], prompt_length: int, spec: ModelSpec, weights: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The reference's logits at the positions run_greedy returns (one layer's weights at a time)."""
    reference = ReferenceModel(spec, {}, layers=False, head=False)
    return reference.forward_streamed(weights, ids)[prompt_length - 1 :]


def measure(got: np.ndarray, expected: np.ndarray, tolerance: float) -> dict[str, Any]:
    """How far got's logits are from expected's: the largest |difference| over the largest |logit|."""
    error = float(np.abs(got - expected).max() / np.abs(expected).max())
    agree = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return {"max_rel_error": error, "tolerance": tolerance, "top1_agreement": agree, "positions": len(got)}


def compare(got: np.ndarray, expected: np.ndarray, what: str, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Raises when got's logits are not expected's within tolerance x the largest |logit|."""
    result = measure(got, expected, tolerance)
    if result["max_rel_error"] > tolerance:
        raise EdgekitError(
            f"verification failed: {what} logits differ from the reference by {result['max_rel_error']:.2e} "
            f"(tolerance {tolerance:.2g}), top-1 agreement {result['top1_agreement']:.0%}; nothing was written"
        )
    return result
