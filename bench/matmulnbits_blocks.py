"""How fast ONNX Runtime's MatMulNBits runs each block size on this machine: one node per graph,
4-bit with zero points, int8 compute (accuracy level 4, edgekit's cpu flavor), random codes, at a
prompt's 128 rows and a decode step's 1, for the projection shapes of SmolLM2-135M, Qwen2.5-0.5B
and Llama-3.2-1B (K x N; fused q/k/v and gate/up as edgekit exports them). An input size the block
does not divide (SmolLM2's 576 in blocks of 128) is padded, as edgekit's exporter pads it. Block
sizes are taken in turn, each the median of --runs calls after a warm-up, for --rounds rounds; the
table gives multiply-adds x 2 per second (GOPS), the median over rounds. `--rows 1,2,4,8` measures the
few-row runs that batched decoding and speculation's verify passes make (SmolLM2's row includes its
49152 x 576 output matrix, which the tied embedding's blocks serve). Weights that fit the cache
make the 1-row numbers faster than a whole model's decode; the ratios between blocks are the point.
For scale, the last column is ONNX Runtime's int8 GEMM on int8 weights (DynamicQuantizeLinear +
MatMulInteger, twice the bytes of 4 bits): what this machine's int8 units reach on the same shape.

    python bench/matmulnbits_blocks.py
    python bench/matmulnbits_blocks.py --rows 1,2,4,8 --models smollm2-135m -o bench/results/matmulnbits_rows.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SHAPES = {
    "smollm2-135m": [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152)],
    "qwen2.5-0.5b": [(896, 1152), (896, 896), (896, 9728), (4864, 896)],
    "llama-3.2-1b": [(2048, 3072), (2048, 2048), (2048, 16384), (8192, 2048)],
}
BLOCKS = (32, 64, 128)
COLUMNS = (*BLOCKS, None)  # None: the int8-weights reference


def matmulnbits(k: int, n: int, block: int):
    from onnx import helper, numpy_helper

    blocks = -(-k // block)
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8), "b"),
        numpy_helper.from_array(rng.random(n * blocks, dtype=np.float32) * 0.01, "scales"),
        numpy_helper.from_array(rng.integers(0, 256, n * -(-blocks // 2), dtype=np.uint8), "zero_points"),
    ]
    node = helper.make_node(
        "MatMulNBits",
        ["x", "b", "scales", "zero_points"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=4,
    )
    return [node], weights


def int8_gemm(k: int, n: int):
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).integers(-127, 128, (k, n), dtype=np.int8)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
        helper.make_node("MatMulInteger", ["xq", "w", "x_zero"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT),
    ]
    return nodes, [numpy_helper.from_array(weight, "w")]


def session(k: int, n: int, block: int | None, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes, weights = int8_gemm(k, n) if block is None else matmulnbits(k, n, block)
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        weights,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def gops(run, x: np.ndarray, n: int, runs: int) -> float:
    for _ in range(5):
        run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(None, {"x": x})
        times.append(time.perf_counter() - start)
    m, k = x.shape
    return 2 * m * k * n / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rows", default="128,1", help="rows of A per run, comma-separated")
    parser.add_argument("--models", default=",".join(SHAPES), help="comma-separated, from: " + ", ".join(SHAPES))
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/matmulnbits_blocks.json"))
    args = parser.parse_args()
    rows = []
    names = [f"g{b}" if b else "int8" for b in COLUMNS]
    print(f"{'model':14s} {'K x N':>12s} {'rows':>4s}  " + "  ".join(f"{name:>7s}" for name in names))
    for model in args.models.split(","):
        for k, n in SHAPES[model]:
            sessions = {name: session(k, n, b, args.threads) for name, b in zip(names, COLUMNS, strict=True)}
            for m in (int(r) for r in args.rows.split(",")):
                x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
                measured: dict[str, list[float]] = {name: [] for name in names}
                for _ in range(args.rounds):
                    for name, s in sessions.items():
                        measured[name].append(gops(s.run, x, n, args.runs))
                row = {"model": model, "K": k, "N": n, "rows": m}
                row["gops"] = {name: round(statistics.median(v), 1) for name, v in measured.items()}
                rows.append(row)
                values = "  ".join(f"{row['gops'][name]:7.1f}" for name in names)
                print(f"{model:14s} {f'{k} x {n}':>12s} {m:4d}  {values}", flush=True)
    import onnxruntime

    result = {"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "onnxruntime": onnxruntime.__version__}
    args.output.write_text(json.dumps({**result, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
