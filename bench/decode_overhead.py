"""Where an edgekit ONNX decode step goes: the whole `decode()` call against ONNX Runtime's run
alone (the difference is Python, binding and the logits copy), and ONNX Runtime's own profile of
one step by operator type.

    python bench/decode_overhead.py out/bench/smollm2-135m/edgekit/default
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    import onnxruntime as ort

    from edgekit.runtimes.loader import load_runtime

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/decode_overhead.json"))
    args = parser.parse_args()

    runtime = load_runtime(args.artifact, max_context=args.steps + 160, threads=args.threads).runtime
    prompt = [int(i) for i in np.random.default_rng(0).integers(100, 30000, 128)]

    def per_step(bare: bool) -> float:
        runtime.reset()
        logits = runtime.decode(int(runtime.prefill(prompt).argmax()))  # binds a one-token step
        start = time.perf_counter()
        for _ in range(args.steps):
            if bare:  # the same bound step again: the graph's cost without Python around it
                runtime.session.run_with_iobinding(runtime.binding)
            else:
                logits = runtime.decode(int(logits.argmax()))
        return (time.perf_counter() - start) / args.steps * 1e3

    per_step(False), per_step(True)
    whole = statistics.median(per_step(False) for _ in range(3))
    graph = statistics.median(per_step(True) for _ in range(3))

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.enable_profiling = True
    options.profile_file_prefix = "/tmp/edgekit-decode-profile"
    session = ort.InferenceSession(str(args.artifact / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([[prompt[0]]], dtype=np.int64), "attention_mask": np.ones((1, 1), dtype=np.int64)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            shape = [1, *(0 if isinstance(d, str) else d for d in i.shape[1:])]  # batch 1, empty past
            feeds[i.name] = np.zeros(shape, dtype=np.float32)
    for _ in range(20):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_type: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_type[e["args"]["op_name"]] += e["dur"]
    total = sum(by_type.values())
    shares = {op: round(us / total, 3) for op, us in sorted(by_type.items(), key=lambda kv: -kv[1])}
    row = {
        "artifact": str(args.artifact),
        "decode_ms": round(whole, 3),
        "graph_ms": round(graph, 3),
        "outside_graph_ms": round(whole - graph, 3),
        "operator_shares": shares,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row, indent=2))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results["/".join(args.artifact.parts[-3:])] = row
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
