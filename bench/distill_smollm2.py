"""Distillation on SmolLM2-135M-Instruct, on this machine's CPU cores, two experiments:

qad      the default INT4 recipe (the best post-training one measured in bench/quant_quality.py),
         then quantization-aware distillation of its scales and norms on the calibration text:
         perplexity of the source, of the recipe alone and after QAD on text none of them saw.
student  a student with half the layers (every other one), distilled from the teacher on the
         calibration text: held-out perplexity before (layers dropped only) and after.

Texts are the fortunes files bench/quant_quality.py uses (calibration: people + wisdom; evaluation:
literature + science). QAD may train on more fortunes files (--files, never the evaluation ones),
hold out --held-out windows of them to score every --eval-every steps and keep the best weights,
and stop after --time-limit minutes (the learning rate then decays over the time).

    # the README's QAD run (bench/results/distill_qad.json)
    python bench/distill_smollm2.py qad --steps 240 --lr 5e-4 --batch-size 4 --window 128 --samples 960 \
        --held-out 16 --eval-every 20 --temperature 1 --ce-weight 0 --time-limit 18 \
        --files people,wisdom,computers,work,politics,humorists,miscellaneous,education,law,platitudes,medicine,love
    python bench/distill_smollm2.py student --steps 150
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import numpy as np  # noqa: E402
from quant_quality import EVAL_FILES, FORTUNES, texts  # noqa: E402

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


def qad_text(files: str) -> str:
    """The fortunes files QAD trains on (never the evaluation ones)."""
    names = [n for n in files.split(",") if n]
    if set(names) & set(EVAL_FILES):
        raise SystemExit(f"--files must not include the evaluation files {', '.join(EVAL_FILES)}")
    texts()  # installs the fortunes package when missing
    return "\n".join((FORTUNES / n).read_text(encoding="utf-8", errors="replace") for n in names)


def split_windows(windows: list[list[int]], held_out: int) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held-out): the held-out windows spread evenly over the text."""
    if not held_out:
        return windows, []
    pick = set(np.linspace(0, len(windows) - 1, held_out).round().astype(int).tolist())
    return [w for i, w in enumerate(windows) if i not in pick], [windows[i] for i in sorted(pick)]


def scored(step: int, result: dict) -> None:
    print(
        f"  held-out calibration text after step {step}: perplexity {result['perplexity']:.3f}, KL {result['kl']:.4f}",
        flush=True,
    )


def qad(args: argparse.Namespace) -> dict:
    from edgekit.distill.qad import quantization_aware_distill

    source = open_checkpoint(smollm2_gguf())
    tokenizer = source.tokenizer.load()
    calibration_text, eval_text = texts()
    ids = tokenizer.encode(calibration_text).ids
    recipe_windows = token_windows(ids, DEFAULT_RECIPE.calibration_window, DEFAULT_RECIPE.calibration_samples)
    qad_ids = tokenizer.encode(qad_text(args.files)).ids
    calibration, held_out = split_windows(
        token_windows(qad_ids, args.window, args.samples + args.held_out), args.held_out
    )
    print(
        f"QAD text: {args.files}, {len(qad_ids)} tokens; {len(calibration)} training windows of {args.window}, "
        f"{len(held_out)} held out",
        flush=True,
    )
    windows = token_windows(tokenizer.encode(eval_text).ids, 256, args.eval_windows)
    reference = ReferenceModel.from_checkpoint(source)
    base = evaluate(windows, reference.forward)
    print(f"source perplexity {base.perplexity:.3f}", flush=True)
    qm = quantize_checkpoint(source, DEFAULT_RECIPE, recipe_windows)
    ptq = evaluate(windows, ReferenceModel(source.spec, qm.weights()).forward, reference.forward)
    print(f"default recipe: perplexity {ptq.perplexity:.3f} (x{ptq.perplexity / base.perplexity:.3f})", flush=True)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup=max(1, args.steps // 10),
        temperature=args.temperature,
        ce_weight=args.ce_weight,
        eval_every=args.eval_every if held_out else 0,
        time_limit=args.time_limit * 60,
    )
    start = time.perf_counter()
    record = quantization_aware_distill(
        source,
        qm,
        calibration,
        config,
        held_out=held_out,
        progress=progress,
        scored=scored,
        rounding_lr=args.rounding_lr,
    )
    seconds = time.perf_counter() - start
    if held_out:
        print(f"held-out calibration text: source perplexity {record['held_out_source_perplexity']:.3f}", flush=True)
    after = evaluate(windows, ReferenceModel(source.spec, qm.weights()).forward, reference.forward)
    print(
        f"after QAD: perplexity {after.perplexity:.3f} (x{after.perplexity / base.perplexity:.3f}), "
        f"KL {ptq.kl:.4f} -> {after.kl:.4f} ({seconds / 60:.1f} min)",
        flush=True,
    )
    return {
        "experiment": "qad",
        "source_perplexity": base.perplexity,
        "default_recipe": ptq.to_dict() | {"ratio": ptq.perplexity / base.perplexity},
        "after_qad": after.to_dict() | {"ratio": after.perplexity / base.perplexity},
        "bits_per_weight": qm.bits_per_weight,
        "qad_seconds": seconds,
        "qad_text": {"files": args.files, "tokens": len(qad_ids)},
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
    parser.add_argument("--samples", type=int, default=32, help="calibration windows to train on (qad)")
    parser.add_argument("--window", type=int, default=128, help="tokens per calibration window (qad)")
    parser.add_argument("--files", default="people,wisdom", help="fortunes files QAD trains on (qad)")
    parser.add_argument("--held-out", type=int, default=0, help="more windows of that text, held out (qad)")
    parser.add_argument("--eval-every", type=int, default=0, help="steps between held-out scores; keeps the best")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--ce-weight", type=float, default=0.0, help="cross-entropy share of the loss")
    parser.add_argument("--rounding-lr", type=float, default=0.0, help="learned rounding's learning rate (0: off)")
    parser.add_argument("--time-limit", type=float, default=0.0, help="minutes of training at most (0: none)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence (student)")
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--out", default="out/distill")
    parser.add_argument(
        "-o", "--output", default=None, help="result file (default bench/results/distill_EXPERIMENT.json)"
    )
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d")
    result = {"date": started, "command": " ".join(["python", "bench/distill_smollm2.py", *sys.argv[1:]])}
    result |= qad(args) if args.experiment == "qad" else student(args)
    path = Path(args.output or f"bench/results/distill_{args.experiment}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
