"""What QNN HTP does with each MatMul weight encoding of the npu flavor (weight_formats.FORMATS), on
the HTP emulator of onnxruntime-qnn with CPU fallback disabled, for the default arch and for the
Snapdragon profiles' targets: one small graph (uint16 activations -> MatMul -> uint16) per format,
compiled, run, and compared with the same graph under ONNX Runtime's exact QDQ arithmetic.

EXPECTED pins the outcome; when an onnxruntime-qnn release changes one, this test fails and the
table (here and in the README's NPU section) is updated from what it measured."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.exporters.npu.qdq_graph import u16_params
from edgekit.exporters.npu.weight_formats import FORMATS
from edgekit.exporters.onnx_graph import Graph
from edgekit.runtimes.onnx_npu import cpu_session, qnn_session

pytest.importorskip("onnxruntime_qnn", reason="the npu flavor needs onnxruntime-qnn")

TOKENS, IN, OUT = 8, 256, 128
TARGETS = {"default": {}, "v73": {"soc_model": "60", "htp_arch": "73"}, "v75": {"soc_model": "57", "htp_arch": "75"}}
AGREES = 0.01  # max |HTP - exact| / max |exact|: the HTP's rounding is 5e-5 (v73/v75) to 1e-3 (default)
WRONG = 0.1  # a misread encoding is off by ~1

EVERYWHERE = dict.fromkeys(("default", "v73", "v75"), "agrees")
# format -> target -> outcome (onnxruntime-qnn 2.7.0, QNN 2.51)
EXPECTED = {
    "int8_channel": EVERYWHERE,
    "int4_channel": EVERYWHERE,
    # blocked DequantizeLinear: the MatMul is left to the CPU unless the session names an arch
    "int4_block32": {"default": "refused", "v73": "agrees", "v75": "agrees"},
    "lpbq32": EVERYWHERE,
    "lpbq64": EVERYWHERE,
    "lpbq32_scales255": dict.fromkeys(EVERYWHERE, "wrong"),  # LPBQ's block scales are 4-bit: 8-bit ones misread
    # two int4 a byte, float block scales: taken only when the session names an arch, like blocked int4
    "matmulnbits32": {"default": "refused", "v73": "agrees", "v75": "agrees"},
}


def qdq(g: Graph, x: str, name: str, lo: float, hi: float) -> str:
    scale, zero = u16_params(lo, hi)
    ins = [x, g.const(name + ".scale", scale), g.const(name + ".zero", zero)]
    (q,) = g.op("QuantizeLinear", ins, name)
    (dq,) = g.op("DequantizeLinear", [q, *ins[1:]], name)
    return dq


def probe_graph(folder, fmt_name: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Write x -> MatMul(weight in `fmt_name`) to folder/model.onnx; returns the float product."""
    from onnx import TensorProto

    fmt = FORMATS[fmt_name]
    encoded, dequantized = fmt.encode(w)
    g = Graph("probe", folder / "model.data")
    h = qdq(g, g.input("x", TensorProto.FLOAT, [1, TOKENS, IN]), "/x", float(x.min()), float(x.max()))
    product = x[0] @ dequantized
    y = fmt.product(g, "/matmul", encoded, h)
    y = qdq(g, y, "/y", 1.2 * float(product.min()), 1.2 * float(product.max()))
    g.op("Identity", [y], "/out", outputs=["out"])
    g.output("out", TensorProto.FLOAT, [1, TOKENS, OUT])
    g.save(folder / "model.onnx")
    return product


def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, TOKENS, IN)).astype(np.float32)
    w = (rng.standard_normal((IN, OUT)) * 0.05).astype(np.float32)
    w[:, 3] *= 20  # an outlier channel, as real checkpoints have
    return x, w


def outcomes_on(target: str) -> dict[str, tuple[str, float | None, float]]:
    """format -> (outcome, HTP's error against the exact QDQ twin, the twin's error against the
    float product), every format compiled for `target` in this process."""
    import tempfile
    from pathlib import Path

    x, w = inputs()
    found = {}
    for fmt_name in EXPECTED:
        folder = Path(tempfile.mkdtemp())
        product = probe_graph(folder, fmt_name, x, w)
        exact = cpu_session(folder / "model.onnx").run(None, {"x": x})[0]
        twin_error = float(np.abs(exact[0] - product).max() / np.abs(product).max())
        try:
            session = qnn_session(folder / "model.onnx", TARGETS[target])
        except EdgekitError:
            found[fmt_name] = ("refused", None, twin_error)
            continue
        error = float(np.abs(session.run(None, {"x": x})[0] - exact).max() / np.abs(exact).max())
        found[fmt_name] = ("agrees" if error <= AGREES else "wrong" if error >= WRONG else "inexact", error, twin_error)
    return found


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    """Each target measured in a fresh process: once a session in a process has named an HTP arch,
    QNN EP keeps accepting for later sessions what only that arch takes (blocked int4)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
        return {target: pool.submit(outcomes_on, target).result() for target in TARGETS}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("fmt_name", EXPECTED)
def test_qnn_htp_weight_format(outcomes, fmt_name, target):
    outcome, error, twin_error = outcomes[target][fmt_name]
    # the exact QDQ twin computes the encoded weight's product (up to the uint16 activations)
    assert twin_error <= 1e-3
    assert outcome == EXPECTED[fmt_name][target], error


@pytest.mark.parametrize("fmt_name", EXPECTED)
def test_weight_format_stores_what_it_computes(fmt_name):
    """Each encoding's dequantized weight is within its grid of the float weight, and 4-bit
    formats take a half to two thirds of the bytes of int8 per channel (their scales the rest)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((IN, OUT)) * 0.05).astype(np.float32)
    encoded, dequantized = FORMATS[fmt_name].encode(w)
    step = np.abs(w).max(axis=0) / (127 if fmt_name == "int8_channel" else 7)
    assert np.all(np.abs(dequantized - w) <= step[None, :] * 0.5 + 1e-7)
    int8_bytes = FORMATS["int8_channel"].encode(w)[0].nbytes
    ratio = encoded.nbytes / int8_bytes
    assert ratio == 1.0 if fmt_name == "int8_channel" else 0.5 <= ratio <= 0.65
