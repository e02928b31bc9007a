"""Exports made by the peers' own tools, for bench/speed.py.

- onnxruntime-genai's builder (int4, cpu) on the demo model written as an HF folder (its builder
  reads HF folders, and float GGUF files only).

    python bench/peer_exports.py --out out/peers
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from edgekit.sources import open_checkpoint
from edgekit.sources.hf_writer import save_hf_folder
from edgekit.testing.demo import smollm2_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/peers"))
    args = parser.parse_args()
    hf = args.out / "smollm2-hf"
    if not (hf / "config.json").is_file():
        save_hf_folder(open_checkpoint(smollm2_gguf()), hf)
    genai = args.out / "smollm2-genai-int4"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf),
            "-o",
            str(genai),
            "-p",
            "int4",
            "-e",
            "cpu",
            "-c",
            str(args.out / "genai-cache"),
        ],
        check=True,
    )
    size = sum(p.stat().st_size for p in genai.iterdir() if p.suffix in (".onnx", ".data"))
    print(f"onnxruntime-genai int4: {genai} ({size / 1e6:.1f} MB of model files, {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
