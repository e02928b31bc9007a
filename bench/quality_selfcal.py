"""Quantization quality as a new user gets it: no calibration file (the export calibrates on text
the model samples itself), measured on two held-out texts of different kinds, on SmolLM2 and on its
off-grid copy, through the numpy reference on the dequantized weights.

Texts (offline, on every machine with this Python): Python's LICENSE.txt (legal prose) and the
standard library's textwrap.py (code), 4 windows of 512 tokens each by default; the same texts as
README's `edgekit eval` example. Per recipe and model: perplexity ratio against the unquantized
model, KL divergence and top-1 agreement, bits/weight of the quantized model (every weight byte
over the parameter count), seconds to quantize. Rows are appended to the JSON file (-o), one per
recipe, model and text, so runs add up into one table.

    python bench/quality_selfcal.py default awq-gptq-g32          # recipes named in RECIPES
    python bench/quality_selfcal.py default --calibration FILE   # calibrated on a file instead
    python bench/quality_selfcal.py --sensitivity                # which tensors lose the most
    python bench/quality_selfcal.py default --qad-steps 40       # then quantization-aware distillation
    python bench/quality_selfcal.py default --layer-tune-steps 10  # each layer's scales tuned (torch)
    python bench/quality_selfcal.py default --grid row           # a non-uniform grid (bench/nonuniform_grid.py)
    python bench/quality_selfcal.py --any-bits --json 'five={"bits": 5}'  # codes no runtime reads

The edgekit measured is this checkout's (the script puts its root first on sys.path).
Self-generated calibration is cached per model under out/cache/ (it is deterministic: seed 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's edgekit, not an installed one

from edgekit.evaluate import evaluate
from edgekit.generation.tokenizer import TextTokenizer
from edgekit.quant.calibration import calibration_sequences, read_text, seed_prompts, token_windows
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import DEFAULT_RECIPE
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing.demo import smollm2_gguf
from edgekit.testing.offgrid import off_grid_copy

PYTHON_LIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
TEXTS = {"license": PYTHON_LIB / "LICENSE.txt", "textwrap": PYTHON_LIB / "textwrap.py"}
CACHE = Path("out/cache")

_8BIT_REST = {"algorithm": "rtn", "bits": 8, "embedding_bits": 8, "overrides": {}}
_4BIT_AWQ_GPTQ = {"bits": 4, "group_size": 128, "algorithm": "awq-gptq", "symmetric": False}

# label -> changes to DEFAULT_RECIPE
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "awq-gptq-g64": {"group_size": 64},
    "awq-gptq-g32": {"group_size": 32},
    "rtn-8bit": {"algorithm": "rtn", "bits": 8, "embedding_bits": 8},
    "v-8bit": {"overrides": {"*.v_proj": {"bits": 8}}},
    "v-down-8bit": {"overrides": {"*.v_proj": {"bits": 8}, "*.down_proj": {"bits": 8}}},
    "embedding-8bit": {"embedding_bits": 8},
    "embedding-g32": {"embedding_group_size": 32},
    "calibration-64x512": {"calibration_samples": 64, "calibration_window": 512},
}

# sensitivity: everything 8-bit round-to-nearest (x1.004 of the source) except one tensor class,
# which gets the default's 4-bit AWQ+GPTQ in blocks of 128 (the embedding its blocks of 64)
SENSITIVITY: dict[str, dict[str, Any]] = {
    **{
        f"only {cls} 4-bit": {**_8BIT_REST, "overrides": {f"*.{cls}": _4BIT_AWQ_GPTQ}}
        for cls in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    },
    "only embedding 4-bit": {
        **_8BIT_REST,
        "embedding_bits": 4,
        "overrides": {"model.embed_tokens": {"algorithm": "gptq"}},
    },
    "only layers 0-2 4-bit": {**_8BIT_REST, "overrides": {f"model.layers.{n}.*": _4BIT_AWQ_GPTQ for n in range(3)}},
    "only layers 27-29 4-bit": {
        **_8BIT_REST,
        "overrides": {f"model.layers.{n}.*": _4BIT_AWQ_GPTQ for n in range(27, 30)},
    },
}


def self_calibration(checkpoint, name: str, recipe, reference) -> list[list[int]]:
    """Cached per model, size and the sequences' starts (a change to seed_prompts makes a new file)."""
    starts = seed_prompts(TextTokenizer(checkpoint.tokenizer), recipe.calibration_samples)
    key = hashlib.sha256(json.dumps(starts).encode()).hexdigest()[:8]
    path = CACHE / f"selfcal-{name}-{recipe.calibration_samples}x{recipe.calibration_window}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    sequences = calibration_sequences(
        checkpoint, recipe.calibration_window, recipe.calibration_samples, None, reference
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sequences))
    return sequences


def qad_record(args, checkpoint, name: str, qm, calibration, reference) -> dict[str, Any]:
    """QAD of `qm` in place by the export's own step (exporters.pipeline._distill: 7/8 of the text
    trained on, 1/8 held out for early stopping), on --qad-samples windows sampled from the model
    (cached; what `edgekit export --qad-steps` trains on without a file), else on the calibration
    sequences (what it trained on before)."""
    from edgekit.distill.qad import qad_config
    from edgekit.exporters.pipeline import _distill

    text = calibration or []
    if args.qad_samples:
        path = CACHE / f"qadtext-{name}-{args.qad_samples}x{args.qad_window}.json"
        if not path.is_file():
            started = time.perf_counter()
            sequences = calibration_sequences(checkpoint, args.qad_window, args.qad_samples, None, reference)
            path.write_text(json.dumps(sequences))
            print(f"sampled {args.qad_samples} x {args.qad_window} tokens in {time.perf_counter() - started:.0f} s")
        text = json.loads(path.read_text())
    started = time.perf_counter()
    shown = lambda step, total, what: print(f"  step {step}/{total}: {what}", flush=True)  # noqa: E731
    record = _distill(checkpoint, qm, text, qad_config(args.qad_steps), shown, print)
    keep = ("steps_run", "kept_step", "loss_first", "loss_last", "held_out_before", "held_out_after")
    return {**{k: record.get(k) for k in keep}, "seconds": time.perf_counter() - started}


def held_out_windows(tokenizer, names: list[str], window: int, count: int) -> dict[str, list[list[int]]]:
    """`count` windows of `window` token ids of each named text in TEXTS."""
    return {t: token_windows(tokenizer.encode(read_text(TEXTS[t])).ids, window, count) for t in names}


class Memo:
    """The source's logits per window, computed once for every recipe."""

    def __init__(self, forward):
        self.forward, self.saved = forward, {}

    def __call__(self, ids):
        key = tuple(ids)
        if key not in self.saved:
            self.saved[key] = self.forward(ids)
        return self.saved[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", help=f"names from RECIPES: {', '.join(RECIPES)}")
    parser.add_argument("--sensitivity", action="store_true", help="the SENSITIVITY recipes")
    parser.add_argument(
        "--json",
        action="append",
        default=[],
        metavar="LABEL=CHANGES",
        help="a recipe given as JSON changes to the default",
    )
    parser.add_argument("--models", default="smollm2,off-grid")
    parser.add_argument("--texts", default="license,textwrap")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--calibration", help="a calibration text file instead of self-generated text")
    parser.add_argument("--gptq-damp", type=float, help="GPTQ's damping (fraction of the mean Hessian diagonal)")
    parser.add_argument(
        "--gptq-plain-grid", action="store_true", help="GPTQ's static-group ranges searched unweighted (before)"
    )
    parser.add_argument(
        "--qad-steps", type=int, help="then QAD as `edgekit export --qad-steps` runs it (torch; see --qad-samples)"
    )
    parser.add_argument(
        "--qad-samples",
        type=int,
        help="QAD on this many windows the model samples itself (cached; the export's way), else on the calibration",
    )
    parser.add_argument("--qad-window", type=int, default=128, help="their length in tokens")
    parser.add_argument(
        "--layer-tune-steps", type=int, help="tune each layer's scales as `edgekit export --layer-tune-steps` (torch)"
    )
    parser.add_argument(
        "--grid", choices=("row", "tensor"), help="4-bit GPTQ onto a non-uniform grid (a probe: no runtime reads it)"
    )
    parser.add_argument(
        "--any-bits", action="store_true", help="allow 2- to 8-bit codes (a probe: ONNX Runtime reads 2, 4, 8)"
    )
    parser.add_argument("-o", "--output", default="bench/results/quality_selfcal.json")
    args = parser.parse_args()

    table = {name: RECIPES[name] for name in args.recipes}
    if args.sensitivity:
        table.update(SENSITIVITY)
    for item in args.json:
        label, _, changes = item.partition("=")
        table[label] = json.loads(changes)
    if not table:
        parser.error("name at least one recipe, --json or --sensitivity")

    if args.gptq_damp is not None:  # an experiment's knob: every GPTQ call below takes this damping
        from edgekit.quant import gptq

        gptq.gptq_factor.__defaults__ = (args.gptq_damp, True)
        gptq.quantize_gptq.__kwdefaults__["damp"] = args.gptq_damp
        table = {f"{label} damp {args.gptq_damp}": changes for label, changes in table.items()}
    if args.qad_steps:
        qad_text = f"self-generated {args.qad_samples} x {args.qad_window}" if args.qad_samples else "the calibration"
        table = {f"{label}, QAD {args.qad_steps} steps on {qad_text}": changes for label, changes in table.items()}
    if args.layer_tune_steps:
        table = {f"{label}, layer-tuned {args.layer_tune_steps} steps": changes for label, changes in table.items()}
    if args.gptq_plain_grid:
        from edgekit.quant import gptq

        gptq.quantize_gptq.__kwdefaults__["weighted_grid"] = False
        table = {f"{label} plain grid": changes for label, changes in table.items()}
    if args.any_bits:
        from edgekit.quant import tensor

        tensor.SUPPORTED_BITS = tuple(range(2, 9))
    if args.grid:
        from nonuniform_grid import install  # bench/, this script's folder

        install(args.grid)
        table = {f"{label}, on a grid per {args.grid} (a probe)": changes for label, changes in table.items()}
    output = Path(args.output)
    results = json.loads(output.read_text()) if output.is_file() else {"rows": []}
    source = open_checkpoint(smollm2_gguf())
    tokenizer = source.tokenizer.load()
    texts = held_out_windows(tokenizer, args.texts.split(","), args.window, args.windows)
    calibration_name = Path(args.calibration).name if args.calibration else "self-generated"
    print(
        f"texts: {', '.join(f'{t} ({sum(len(w) - 1 for w in ws)} tokens)' for t, ws in texts.items())}; "
        f"calibration: {calibration_name}",
        flush=True,
    )
    print(
        "| recipe | model | bits/weight | MB | "
        + " | ".join(f"x source {t} | KL {t}" for t in texts)
        + " | quantize s |",
        flush=True,
    )
    for model_name in args.models.split(","):
        checkpoint = source if model_name == "smollm2" else off_grid_copy(source)
        reference = ReferenceModel.from_checkpoint(checkpoint)
        memo = Memo(reference.forward)
        base = {t: evaluate(ws, memo) for t, ws in texts.items()}
        for label, changes in table.items():
            # as the default export (ONNX cpu) decides it: rotated unless the changes say otherwise
            recipe = replace(DEFAULT_RECIPE, **changes).with_rotation(True)
            calibration = None
            if recipe.needs_calibration:
                if args.calibration:
                    ids = tokenizer.encode(read_text(args.calibration)).ids
                    calibration = token_windows(ids, recipe.calibration_window, recipe.calibration_samples)
                else:
                    calibration = self_calibration(checkpoint, model_name, recipe, reference)
            tuner = None
            if args.layer_tune_steps:
                from edgekit.distill.layer_tune import LayerTuner

                tuner = LayerTuner(checkpoint.spec, args.layer_tune_steps)
            qm = quantize_checkpoint(checkpoint, recipe, calibration, tune_layer=tuner)
            qad = qad_record(args, checkpoint, model_name, qm, calibration, reference) if args.qad_steps else None
            model = ReferenceModel(checkpoint.spec, qm.weights())
            cells = []
            for t, ws in texts.items():
                q = evaluate(ws, model.forward, memo)
                row = {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "recipe": label,
                    "model": model_name,
                    "text": t,
                    "calibration": calibration_name,
                    "tokens": q.tokens,
                    "source_perplexity": base[t].perplexity,
                    "perplexity": q.perplexity,
                    "ratio": q.perplexity / base[t].perplexity,
                    "kl": q.kl,
                    "top1": q.top1,
                    "bits_per_weight": qm.bits_per_weight,
                    "megabytes": qm.nbytes / 1e6,
                    "quantize_seconds": qm.seconds,
                    "cores": os.cpu_count(),
                    "changes": changes,
                    **({"qad": qad} if qad else {}),
                    **({"layer_tune_seconds": tuner.record()["seconds"]} if tuner else {}),
                }
                results["rows"].append(row)
                cells.append(f"{row['ratio']:.3f} | {q.kl:.4f}")
            print(
                f"| {label} | {model_name} | {qm.bits_per_weight:.2f} | {qm.nbytes / 1e6:.1f} | "
                + " | ".join(cells)
                + f" | {qm.seconds:.0f} |",
                flush=True,
            )
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=1))
            del qm, model


if __name__ == "__main__":
    main()
