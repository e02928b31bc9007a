"""The npu graphs checked against the numpy reference on the weights they hold: first with exact
QDQ arithmetic (ONNX Runtime's CPU provider), then on QNN HTP, then the EPContext models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EdgekitError
from ...reference import ReferenceModel
from ...runtimes.onnx_npu import NpuRuntime, cpu_session
from ..verify import compare, run_greedy
from .layout import GRAPHS
from .weights import NpuWeights

# max |logit diff| / max |logit| against the numpy reference on the same (int8) weights:
TOLERANCE = 0.15  # the QDQ graphs with exact QDQ arithmetic (ONNX Runtime CPU): the uint16 rounding
MEDIAN_TOLERANCE = 0.025  # the same on QNN HTP, median over positions (tests, tiny models)
HTP_TOLERANCE = 0.5  # on QNN HTP, whose 16x8-bit MatMuls are not bit-exact (~110 LSB of 16 bits)


def verify_npu(folder: Path, npu: dict, w: NpuWeights, prompt: list[int], steps: int = 4) -> dict[str, Any]:
    """Prefill + greedy decode steps against the numpy reference on the weights the graphs hold:
    the QDQ graphs on ONNX Runtime's CPU provider (exact QDQ arithmetic: checks the graph, its
    weights and its ranges, within TOLERANCE), then on QNN HTP with CPU fallback disabled (within
    HTP_TOLERANCE: the HTP's own 16x8-bit MatMuls add their rounding). EPContext models must give
    the QDQ graphs' tokens on the HTP. Raises when any check fails."""
    plain = {k: v for k, v in npu.items() if k not in ("context_graphs", "qnn_options")}
    reference = ReferenceModel(w.reference_spec, w.reference)
    sessions = (cpu_session(folder / GRAPHS["prefill"]), cpu_session(folder / GRAPHS["decode"]))
    ids, got = run_greedy(NpuRuntime(folder, w.spec, plain, sessions=sessions, embedding=w.embedding), prompt, steps)
    result: dict[str, Any] = {"checked": True, "graph": "the QDQ graphs, then the same on QNN HTP"}
    result["qdq_on_cpu"] = compare(got, reference.forward(ids)[len(prompt) - 1 :], "ONNX Runtime CPU", TOLERANCE)
    # the QDQ graphs are run for the same HTP the EPContext models were compiled for: the emulator's
    # arithmetic differs by arch (its default arch rounds MatMuls ~15x coarser than v73/v75)
    options = npu.get("qnn_options")
    runtime = NpuRuntime(folder, w.spec, plain, embedding=w.embedding, qnn_options=options)
    ids, got = run_greedy(runtime, prompt, steps)
    result["qnn_htp"] = compare(got, reference.forward(ids)[len(prompt) - 1 :], "QNN HTP", HTP_TOLERANCE)
    result["max_rel_error"] = result["qnn_htp"]["max_rel_error"]
    result["top1_agreement"] = result["qnn_htp"]["top1_agreement"]
    result["tolerance"] = HTP_TOLERANCE
    if npu.get("context_graphs"):
        runtime = NpuRuntime(folder, w.spec, npu, embedding=w.embedding, qnn_options=options)
        context_ids, context_got = run_greedy(runtime, prompt, steps)
        if context_ids != ids:
            raise EdgekitError(
                f"verification failed: the EPContext models chose tokens {context_ids[len(prompt) :]} where "
                f"the QDQ graphs chose {ids[len(prompt) :]} on QNN HTP; nothing was written"
            )
        result["epcontext"] = {"same_tokens": True, "max_logit_difference": float(np.abs(context_got - got).max())}
    return result
