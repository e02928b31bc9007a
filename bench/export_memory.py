"""Peak memory of `edgekit export` on random-weight checkpoints of real model shapes.

The checkpoint is written shard by shard (bf16 safetensors, one shard per layer, like a hub
download) in a child process; the export runs in another child whose peak RSS (ru_maxrss) is
compared with the checkpoint's fp16 size. Target: under half of it. (Linux carries a process's
peak RSS across exec, so this parent stays small: a child forked from a big parent would report
the parent's size.)

    python bench/export_memory.py --shape llama-3.2-1b-shape --algorithm rtn

(bench/run.py measures the RTN export of every shape with the other engines; this script is for
the calibrated recipes, which take half an hour at 1B on 2 cores.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sources import SHAPES, write_random_checkpoint


def _shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors headers (reads no weights)."""
    from edgekit.sources.safetensors_io import read_header

    shapes = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors, _ = read_header(shard)
        shapes.update({name: t.shape for name, t in tensors.items()})
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b-shape")
    parser.add_argument("--algorithm", default="rtn", help="rtn/hqq need no calibration; awq/gptq need --calibration")
    parser.add_argument("--calibration", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("out/export-memory"))
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/export_memory.json"))
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    source = args.work / f"random-{args.shape}"
    if args.write_only:
        write_random_checkpoint(source, args.shape)
        return
    start = time.perf_counter()
    if not (source / "config.json").is_file():
        subprocess.run(
            [sys.executable, __file__, "--shape", args.shape, "--work", str(args.work), "--write-only"], check=True
        )
    params = sum(int(np.prod(s)) for s in _shapes(source).values())
    print(f"checkpoint: {source} ({params / 1e9:.2f} B parameters, ready in {time.perf_counter() - start:.0f} s)")
    out = args.work / f"random-{args.shape}-onnx"
    command = [sys.executable, "-m", "edgekit", "export", str(source), "-o", str(out), "--overwrite"]
    command += ["-a", args.algorithm, "--max-context", "2048", "--json"]
    if args.calibration:
        command += ["--calibration", str(args.calibration)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        child = subprocess.Popen(command, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the checkpoint writer's
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out_file.seek(0), err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    if child.returncode != 0:
        sys.exit(f"export failed:\n{stderr[-3000:]}")
    peak_mb = usage.ru_maxrss / 1024
    fp16_mb = 2 * params / 2**20
    result = json.loads(stdout)
    row = {
        "shape": args.shape,
        "parameters": params,
        "algorithm": args.algorithm,
        "fp16_mb": round(fp16_mb, 1),
        "export_peak_rss_mb": round(peak_mb, 1),
        "peak_over_fp16": round(peak_mb / fp16_mb, 3),
        "export_seconds": round(seconds, 1),
        "artifact_mb": round(result["megabytes"], 1),
        "verify": result["verify"],
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row, indent=2))
    results = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results[f"{args.shape}-{args.algorithm}"] = row
    args.output.write_text(json.dumps(results, indent=2))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
