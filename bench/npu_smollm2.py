"""SmolLM2-135M as an NPU artifact on onnxruntime-qnn's HTP emulator (x86-64): export, load, one
chat answer. The emulator is a functional model of the Hexagon NPU, not a speed model: these
numbers say what the flavor costs on this machine, not how fast a Snapdragon runs it.

    python bench/npu_smollm2.py      # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

QUESTION = "What is the capital of France?"


def main() -> None:
    import edgekit
    from edgekit.quant.recipe import Recipe
    from edgekit.testing.demo import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=Path, default=Path("out/calibration.txt"))
    parser.add_argument("--out", type=Path, default=Path("out/bench/smollm2-npu"))
    parser.add_argument("--tokens", type=int, default=12)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/npu_smollm2.json"))
    args = parser.parse_args()

    exported = edgekit.export(
        smollm2_gguf(),
        args.out,
        flavor="npu",
        recipe=Recipe(algorithm="rtn"),
        calibration=args.calibration,
        max_context=256,
        overwrite=True,
    )
    start = time.perf_counter()
    engine = edgekit.load(args.out)
    load_seconds = time.perf_counter() - start
    answer = engine.chat(QUESTION, max_new_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    stats = answer.stats
    row = {
        "date": time.strftime("%Y-%m-%d"),
        "export_seconds": exported.seconds,
        "artifact_mb": exported.megabytes,
        "verify": exported.verify,
        "load_seconds": load_seconds,
        "prompt_tokens": stats.prompt_tokens,
        "prefill_seconds": stats.prompt_seconds,
        "seconds_per_token": stats.generation_seconds / max(stats.decode_steps, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "question": QUESTION,
        "answer": answer.text,
    }
    print(json.dumps(row, indent=2))
    args.output.write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
