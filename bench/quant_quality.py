"""Quantization quality on SmolLM2-135M-Instruct and on its off-grid copy.

For each recipe: perplexity on English prose that calibration never saw, KL divergence and top-1
agreement against the unquantized model, effective bits per weight (all weight bytes, scales and
zero points included, over the parameter count), size, and the time to quantize on this machine.

Texts: Debian's `fortunes` package (apt-get install fortunes). Calibration on the `people` and
`wisdom` files, evaluation on `literature` and `science`.

    python bench/quant_quality.py                 # the README table (about 25 minutes on 2 cores)
    python bench/quant_quality.py --quick         # default recipe and RTN only
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from edgekit.evaluate import evaluate
from edgekit.quant.calibration import token_windows
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import DEFAULT_RECIPE
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing.demo import smollm2_gguf
from edgekit.testing.offgrid import off_grid_copy

FORTUNES = Path("/usr/share/games/fortunes")
CALIBRATION_FILES = ("people", "wisdom")
EVAL_FILES = ("literature", "science")

# (label, changes to the default recipe)
TABLE = [("default", {})]
for g in (32, 64, 128):  # uniform recipes: every block asymmetric at one group size
    for algorithm in ("rtn", "hqq", "awq", "gptq"):
        TABLE.append(
            (f"{algorithm} g{g}", {"algorithm": algorithm, "group_size": g, "symmetric": False, "overrides": {}})
        )
QUICK = [("default", {}), ("rtn g32", {"algorithm": "rtn", "group_size": 32, "symmetric": False, "overrides": {}})]


def texts() -> tuple[str, str]:
    if not FORTUNES.is_dir():
        subprocess.run(["apt-get", "install", "-y", "-qq", "fortunes"], check=True)
    read = lambda names: "\n".join((FORTUNES / n).read_text(encoding="utf-8", errors="replace") for n in names)  # noqa: E731
    return read(CALIBRATION_FILES), read(EVAL_FILES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="smollm2,off-grid")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("-o", "--output", default="bench/results/quant_quality.json")
    args = parser.parse_args()

    calibration_text, eval_text = texts()
    source = open_checkpoint(smollm2_gguf())
    tokenizer = source.tokenizer.load()
    calibration = token_windows(
        tokenizer.encode(calibration_text).ids, DEFAULT_RECIPE.calibration_window, DEFAULT_RECIPE.calibration_samples
    )
    windows = token_windows(tokenizer.encode(eval_text).ids, 256, args.eval_windows)
    results = {
        "machine": f"{platform.machine()} {platform.processor()}, {__import__('os').cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "eval_tokens": sum(len(w) - 1 for w in windows),
        "rows": [],
    }
    for model_name in args.models.split(","):
        checkpoint = source if model_name == "smollm2" else off_grid_copy(source)
        reference = ReferenceModel.from_checkpoint(checkpoint)
        base = evaluate(windows, reference.forward)
        print(f"\n## {model_name}: source perplexity {base.perplexity:.3f}", flush=True)
        results["rows"].append(
            {
                "model": model_name,
                "recipe": "source",
                "perplexity": base.perplexity,
                "ratio": 1.0,
                "kl": 0.0,
                "top1": 1.0,
                "bits_per_weight": 32.0,
                "megabytes": checkpoint.parameter_count * 4 / 1e6,
                "seconds": 0.0,
            }
        )
        print("| recipe | bits/weight | MB | perplexity | x source | KL | top-1 | quantize s |")
        print("|---|---|---|---|---|---|---|---|")
        for label, changes in QUICK if args.quick else TABLE:
            # as the default export (ONNX cpu) decides it: rotated unless the changes say otherwise
            recipe = replace(DEFAULT_RECIPE, **changes).with_rotation(True)
            qm = quantize_checkpoint(checkpoint, recipe, calibration if recipe.needs_calibration else None)
            q = evaluate(windows, ReferenceModel(checkpoint.spec, qm.weights()).forward, reference.forward)
            row = {
                "model": model_name,
                "recipe": label,
                "perplexity": q.perplexity,
                "ratio": q.perplexity / base.perplexity,
                "kl": q.kl,
                "top1": q.top1,
                "bits_per_weight": qm.bits_per_weight,
                "megabytes": qm.nbytes / 1e6,
                "seconds": qm.seconds,
                "details": recipe.to_dict(),
            }
            results["rows"].append(row)
            print(
                f"| {label} | {row['bits_per_weight']:.2f} | {row['megabytes']:.1f} | {q.perplexity:.2f} | "
                f"{row['ratio']:.3f} | {q.kl:.4f} | {q.top1:.3f} | {qm.seconds:.1f} |",
                flush=True,
            )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"\nwritten {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
