"""What the parts of an edgekit decode step cost, found by taking them out of the graph: the artifact
as it is, with GroupQueryAttention replaced by a slice of its input (no attention, no KV cache),
and with each fused norm replaced by its residual add (no normalization). The outputs are wrong;
the timings are what is left. Each variant runs the same bound one-token step (past 128) over and
over, in a fresh process per measurement, the variants taken in turn for --rounds rounds (this
host's speed drifts from minute to minute), with the weights on huge pages as the runtime loads
them. Profilers are no use here: ONNX Runtime's adds more than half to a step's time. Also: the
time a `decode()` call spends outside ONNX Runtime's run (Python, binding, the logits copy), over
128 steps after a 128-token prompt.

    python bench/decode_ablation.py out/bench/smollm2-135m/edgekit/default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PAST, CAPACITY, STEPS = 128, 300, 60


def without_attention(graph) -> None:
    from onnx import helper, numpy_helper

    hidden = None
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            heads = next(a.i for a in node.attribute if a.name == "num_heads")
            hidden = heads * head_dim(graph)
    graph.initializer.extend(
        numpy_helper.from_array(np.array([v], np.int64), name)
        for name, v in (("ablation/zero", 0), ("ablation/hidden", hidden), ("ablation/last", -1))
    )
    nodes = [
        helper.make_node("Slice", [n.input[0], "ablation/zero", "ablation/hidden", "ablation/last"], [n.output[0]])
        if n.op_type == "GroupQueryAttention"
        else n
        for n in graph.node
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    for field, prefix in ((graph.input, "past_key_values"), (graph.output, "present")):
        kept = [v for v in field if not v.name.startswith(prefix)]
        del field[:]
        field.extend(kept)


def head_dim(graph) -> int:
    past = next(v for v in graph.input if v.name.startswith("past_key_values"))
    return past.type.tensor_type.shape.dim[3].dim_value


def without_norms(graph) -> None:
    from onnx import helper

    nodes = []
    for n in graph.node:
        if n.op_type == "SkipSimplifiedLayerNormalization" and len(n.output) > 3 and n.output[3]:
            nodes += [
                helper.make_node("Add", n.input[:2], [n.output[3]]),
                helper.make_node("Identity", [n.output[3]], [n.output[0]]),
            ]
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)


VARIANTS = {"as exported": None, "no attention": without_attention, "no norms": without_norms}


def write_variants(artifact: Path, work: Path) -> dict[str, Path]:
    import onnx

    folders = {}
    for name, change in VARIANTS.items():
        folder = work / name.replace(" ", "-")
        folder.mkdir()
        try:  # the external data must sit beside the graph
            os.link(artifact / "model.onnx.data", folder / "model.onnx.data")
        except OSError:
            shutil.copy(artifact / "model.onnx.data", folder)
        model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
        if change:
            change(model.graph)
        onnx.save(model, str(folder / "model.onnx"))
        folders[name] = folder
    return folders


def time_step(folder: Path, threads: int) -> float:
    """Microseconds per bound decode step, the best of 5 batches of STEPS (in this process)."""
    import onnxruntime as ort

    from edgekit.runtimes.onnx import make_session

    session = make_session(folder / "model.onnx", threads=threads, huge_pages=True)  # as the runtime builds it
    binding, keep = session.io_binding(), []
    outputs = {o.name for o in session.get_outputs()}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values"):
            value = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, i.shape[1], CAPACITY, i.shape[3]), np.float32))
            binding.bind_ortvalue_input(i.name, value)
            binding.bind_ortvalue_output(i.name.replace("past_key_values", "present"), value)
            keep.append(value)
        elif i.name == "logits_to_keep":  # graphs exported since speculative decoding
            array = np.ones(1, np.int64)
            binding.bind_cpu_input(i.name, array)
            keep.append(array)
        else:  # input_ids, attention_mask
            array = np.full((1, 1), 300, np.int64) if i.name == "input_ids" else np.ones((1, PAST + 1), np.int64)
            binding.bind_cpu_input(i.name, array)
            keep.append(array)
    for name in outputs:
        if not name.startswith("present"):
            binding.bind_output(name, "cpu")
    for _ in range(20):
        session.run_with_iobinding(binding)
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(STEPS):
            session.run_with_iobinding(binding)
        batches.append((time.perf_counter() - start) / STEPS * 1e6)
    return min(batches)


def outside_run(artifact: Path, threads: int) -> float:
    """Microseconds per `decode()` call spent outside `run_with_iobinding`, median of 3 passes."""
    from edgekit.generation.loader import load_runtime

    runtime = load_runtime(artifact, max_context=PAST + 136, threads=threads).runtime
    inside = [0.0]
    run = runtime.session.run_with_iobinding

    def timed(binding, *rest) -> None:
        start = time.perf_counter()
        run(binding, *rest)
        inside[0] += time.perf_counter() - start

    runtime.session.run_with_iobinding = timed
    prompt = [int(i) for i in np.random.default_rng(0).integers(100, 30000, PAST)]
    passes = []
    for _ in range(4):
        runtime.reset()
        token = int(runtime.prefill(prompt).argmax())
        inside[0] = 0.0
        start = time.perf_counter()
        for _ in range(128):
            token = int(runtime.decode(token).argmax())
        passes.append((time.perf_counter() - start - inside[0]) / 128 * 1e6)
    return statistics.median(passes[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", type=Path, help=argparse.SUPPRESS)  # in a child: one measurement
    parser.add_argument("--outside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/decode_ablation.json"))
    args = parser.parse_args()
    if args.time:
        print(time_step(args.time, args.threads))
        return
    if args.outside:
        print(outside_run(args.artifact, args.threads))
        return
    with tempfile.TemporaryDirectory(dir=args.artifact.parent) as work:
        folders = write_variants(args.artifact, Path(work))
        times: dict[str, list[float]] = {name: [] for name in folders}
        for r in range(args.rounds):
            for name, folder in folders.items():
                command = [sys.executable, __file__, str(args.artifact), "--time", str(folder)]
                out = subprocess.run([*command, "--threads", str(args.threads)], capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
                times[name].append(float(out.stdout.split()[-1]))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {t[-1]:.0f} us" for n, t in times.items()))
    command = [sys.executable, __file__, str(args.artifact), "--outside", "--threads", str(args.threads)]
    outside = float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])
    whole = statistics.median(times["as exported"])
    row = {
        "artifact": str(args.artifact),
        "past": PAST,
        "threads": args.threads,
        "step_us": {name: round(statistics.median(t)) for name, t in times.items()},
        "share_of_step": {
            name: round(1 - statistics.median(t) / whole, 3) for name, t in times.items() if name != "as exported"
        },
        "rounds": {name: [round(x) for x in t] for name, t in times.items()},
        "outside_run_us_per_decode": round(outside),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row, indent=2))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results["/".join(args.artifact.parts[-3:])] = row
    args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
