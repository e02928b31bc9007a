"""Distillation on SmolLM2-135M-Instruct, on this machine's CPU cores, two experiments:

qad      the default INT4 recipe (the best post-training one measured in bench/quant_quality.py),
         then quantization-aware distillation of its scales and norms on the calibration text:
         perplexity of the source, of the recipe alone and after QAD on text none of them saw.
student  a student with half the layers (every other one), distilled from the teacher on the
         calibration text: held-out perplexity before (layers dropped only) and after.

Texts are the fortunes files bench/quant_quality.py uses (calibration: people + wisdom; evaluation:
literature + science).

    python bench/distill_smollm2.py qad --steps 60
    python bench/distill_smollm2.py student --steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quant_quality import texts  # noqa: E402

from edgekit.distill.train import TrainConfig  # noqa: E402
from edgekit.evaluate import evaluate  # noqa: E402
from edgekit.quant import quantize_checkpoint  # noqa: E402
from edgekit.quant.calibration import token_windows  # noqa: E402
from edgekit.quant.recipe import DEFAULT_RECIPE  # noqa: E402
from edgekit.reference import ReferenceModel  # noqa: E402
from edgekit.sources import open_checkpoint  # noqa: E402
from edgekit.testing.demo import smollm2_gguf  # noqa: E402


def progress(step: int, total: int, info: dict[str, float]) -> None:
    print(f"  step {step}/{total}: loss {info['loss']:.4f}, {info['tokens_per_s']:.0f} tokens/s", flush=True)


def qad(args: argparse.Namespace) -> dict:
    from edgekit.distill.qad import quantization_aware_distill

    source = open_checkpoint(smollm2_gguf())
    tokenizer = source.tokenizer.load()
    calibration_text, eval_text = texts()
    ids = tokenizer.encode(calibration_text).ids
    recipe_windows = token_windows(ids, DEFAULT_RECIPE.calibration_window, DEFAULT_RECIPE.calibration_samples)
    calibration = token_windows(ids, args.window, args.samples)
    windows = token_windows(tokenizer.encode(eval_text).ids, 256, args.eval_windows)
    reference = ReferenceModel.from_checkpoint(source)
    base = evaluate(windows, reference.forward)
    print(f"source perplexity {base.perplexity:.3f}", flush=True)
    qm = quantize_checkpoint(source, DEFAULT_RECIPE, recipe_windows)
    ptq = evaluate(windows, ReferenceModel(source.spec, qm.weights()).forward, reference.forward)
    print(f"default recipe: perplexity {ptq.perplexity:.3f} (x{ptq.perplexity / base.perplexity:.3f})", flush=True)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup=max(1, args.steps // 10)
    )
    start = time.perf_counter()
    record = quantization_aware_distill(source, qm, calibration, config, progress=progress)
    seconds = time.perf_counter() - start
    after = evaluate(windows, ReferenceModel(source.spec, qm.weights()).forward, reference.forward)
    print(f"after QAD: perplexity {after.perplexity:.3f} (x{after.perplexity / base.perplexity:.3f})", flush=True)
    return {
        "experiment": "qad",
        "source_perplexity": base.perplexity,
        "default_recipe": ptq.to_dict() | {"ratio": ptq.perplexity / base.perplexity},
        "after_qad": after.to_dict() | {"ratio": after.perplexity / base.perplexity},
        "bits_per_weight": qm.bits_per_weight,
        "qad_seconds": seconds,
        "qad": record,
    }


def student(args: argparse.Namespace) -> dict:
    from edgekit.distill import distill

    calibration_text, _ = texts()
    data = Path(args.out) / "distill-data.txt"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(calibration_text, encoding="utf-8")
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, warmup=max(1, args.steps // 10)
    )
    start = time.perf_counter()
    result = distill(
        smollm2_gguf(),
        Path(args.out) / "smollm2-student-15",
        layers=15,
        data=[data],
        sequence_length=args.seq_len,
        held_out=args.eval_windows,
        config=config,
        overwrite=True,
        progress=progress,
        stage=print,
    )
    seconds = time.perf_counter() - start
    print(
        f"held-out perplexity: teacher {result.teacher['perplexity']:.2f}, student before "
        f"{result.before['perplexity']:.2f}, after {result.after['perplexity']:.2f} ({seconds / 60:.1f} min)"
    )
    return {
        "experiment": "student",
        "layers": result.layers,
        "teacher": result.teacher,
        "before": result.before,
        "after": result.after,
        "losses": result.losses,
        "seconds": seconds,
        "training": config.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["qad", "student"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--samples", type=int, default=32, help="calibration windows (qad)")
    parser.add_argument("--window", type=int, default=128, help="tokens per calibration window (qad)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence (student)")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--out", default="out/distill")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d")
    result = {"date": started, "command": " ".join(["python", "bench/distill_smollm2.py", *sys.argv[1:]])}
    result |= qad(args) if args.experiment == "qad" else student(args)
    path = Path(f"bench/results/distill_{args.experiment}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
