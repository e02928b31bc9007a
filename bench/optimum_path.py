"""The native graph builder against the optimum path, on the same model and the same quantization
(RTN 4-bit, blocks of 32, 8-bit lm_head): export time, artifact size, and pp/tg tokens/s measured
by `edgekit bench` (llama-bench's method) in one process per artifact, interleaved, in one run.
Runs in the virtualenv that has the optimum extra (`make .venv-optimum/.ready`):

    .venv-optimum/bin/python bench/optimum_path.py --source SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import edgekit
from edgekit.quant.recipe import Recipe


def bench(artifact: Path, prompt: int, generate: int, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "edgekit", "bench", str(artifact), "-p", str(prompt), "-n", str(generate)]
    command += ["-r", "1", "-o", "json", "--profile", "none", "--threads", str(threads)]
    rows = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return {row["test"][:2]: row["mean"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="a llama-family checkpoint (HF folder or GGUF)")
    parser.add_argument("--out", default="out/optimum-path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--generate", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--json", default="bench/results/optimum_path.json")
    args = parser.parse_args()

    # RTN: integer zero points, read by ONNX Runtime's MatMulNBits kernels themselves (float zero
    # points need an extra term per projection in both graphs)
    recipe = Recipe(algorithm="rtn", lm_head_bits=8, embedding_bits=8)
    paths = {}
    exports = {}
    for via in ("native", "optimum"):
        out = Path(args.out) / via
        start = time.perf_counter()
        edgekit.export(args.source, out, recipe=recipe, max_context=1024, overwrite=True, via=via)
        exports[via] = time.perf_counter() - start
        paths[via] = out
        print(f"exported {via} in {exports[via]:.0f} s", file=sys.stderr)

    speeds: dict[str, dict[str, list[float]]] = {via: {"pp": [], "tg": []} for via in paths}
    for _ in range(args.repetitions):  # interleaved, so drift in the machine hits both alike
        for via, path in paths.items():
            for test, value in bench(path, args.prompt, args.generate, args.threads).items():
                speeds[via][test].append(value)
    rows = {}
    for via, path in paths.items():
        rows[via] = {
            "export_s": round(exports[via], 1),
            "size_mb": round(sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6, 1),
            "prefill_tokens_per_s": round(statistics.median(speeds[via]["pp"]), 1),
            "decode_tokens_per_s": round(statistics.median(speeds[via]["tg"]), 1),
        }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "command": " ".join(["python", "bench/optimum_path.py", *sys.argv[1:]]),
        "recipe": "rtn 4-bit g32, 8-bit embedding (native) and lm_head",
        "threads": args.threads,
        "test": f"pp{args.prompt} / tg{args.generate}, median of {args.repetitions}",
        "rows": rows,
        "native_over_optimum": {
            "prefill": round(rows["native"]["prefill_tokens_per_s"] / rows["optimum"]["prefill_tokens_per_s"], 2),
            "decode": round(rows["native"]["decode_tokens_per_s"] / rows["optimum"]["decode_tokens_per_s"], 2),
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print("| path | export s | size MB | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|---|")
    for via, row in rows.items():
        print(
            f"| {via} | {row['export_s']} | {row['size_mb']} | {row['prefill_tokens_per_s']} | "
            f"{row['decode_tokens_per_s']} |"
        )
    print(f"native / optimum: {result['native_over_optimum']}")


if __name__ == "__main__":
    main()
