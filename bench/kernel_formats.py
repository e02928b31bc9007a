"""What ONNX Runtime's CPU kernels charge for each weight format edgekit could emit: MatMulNBits
with 2-, 4- and 8-bit codes, and MatMulBnb4 (NF4, a fixed non-uniform grid), one node each on
SmolLM2's matrix shapes, at one token (decode) and at 128 (prefill). Code widths MatMulNBits
refuses are recorded with ONNX Runtime's message.

    python bench/kernel_formats.py [-o bench/results/kernel_formats.json]

Every format is timed in each of --rounds rounds, in turn; the median and range of the rounds'
per-call times are reported. Random codes and scales: the kernels' time does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = {"gate_proj": (1536, 576), "down_proj": (576, 1536)}  # (N outputs, K inputs)
BLOCK = 64
FORMATS = ("nbits4", "nbits2", "nbits8", "nbits5", "bnb4-nf4")


def session(fmt: str, n: int, k: int, rng: np.random.Generator) -> ort.InferenceSession:
    if fmt.startswith("nbits"):
        bits = int(fmt[5:])
        blob = np.frombuffer(rng.bytes(n * (k // BLOCK) * BLOCK * bits // 8), np.uint8)
        inits = [
            numpy_helper.from_array(blob.reshape(n, k // BLOCK, BLOCK * bits // 8), "B"),
            numpy_helper.from_array(rng.random(n * (k // BLOCK), np.float32), "scales"),
        ]
        attrs = {"K": k, "N": n, "block_size": BLOCK, "bits": bits, "accuracy_level": 4}
        node = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y"], domain="com.microsoft", **attrs)
    else:
        inits = [
            numpy_helper.from_array(np.frombuffer(rng.bytes((n * k + 1) // 2), np.uint8), "B"),
            numpy_helper.from_array(rng.random(n * k // BLOCK, np.float32), "absmax"),
        ]
        attrs = {"K": k, "N": n, "block_size": BLOCK, "quant_type": 1}
        node = helper.make_node("MatMulBnb4", ["A", "B", "absmax"], ["Y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        fmt,
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def per_call(sess: ort.InferenceSession, a: np.ndarray, calls: int) -> float:
    sess.run(None, {"A": a})
    started = time.perf_counter()
    for _ in range(calls):
        sess.run(None, {"A": a})
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-o", "--output", default="bench/results/kernel_formats.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sessions, refused = {}, {}
    for shape, (n, k) in SHAPES.items():
        for fmt in FORMATS:
            try:
                sessions[shape, fmt] = session(fmt, n, k, rng)
            except Exception as error:  # ONNX Runtime's refusal, kept as measured
                refused[fmt] = str(error).splitlines()[-1][-160:]
    times: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.rounds):
        for (shape, fmt), sess in sessions.items():
            k = SHAPES[shape][1]
            for m, calls in ((1, 200), (128, 10)):
                a = rng.standard_normal((m, k), np.float32)
                times.setdefault((shape, fmt, m), []).append(per_call(sess, a, calls))
    rows = []
    print("| shape | format | tokens | median us | range us |")
    for (shape, fmt, m), ts in times.items():
        us = [t * 1e6 for t in ts]
        rows.append(
            {
                "shape": shape,
                "format": fmt,
                "tokens": m,
                "median_us": statistics.median(us),
                "range_us": [min(us), max(us)],
            }
        )
        print(f"| {shape} | {fmt} | {m} | {statistics.median(us):.0f} | {min(us):.0f}-{max(us):.0f} |")
    for fmt, why in refused.items():
        print(f"{fmt}: refused: {why}")
    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "onnxruntime": ort.__version__, "rows": rows, "refused": refused}
    Path(args.output).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
