"""Quality and bytes of the npu flavor's MatMul weight formats (exporters/npu/weight_formats.py) on
SmolLM2-135M and its off-grid copy: the Snapdragon profiles' recipe (AWQ+GPTQ, 4-bit blocks of 32,
8-bit embedding and lm_head) quantized once, then each format's weights as the npu graphs compute
with them (norms folded in, the embedding int8 per row), through the numpy reference: perplexity
over the unquantized model's on held-out text, against int8 per channel (the format before) and the
cpu flavor's default recipe. Activations stay float here: the uint16 activations are the same for
every format, so these rows isolate what the weight format costs.

    python bench/npu_quality.py --calibration out/calibration.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's edgekit

from edgekit.evaluate import evaluate
from edgekit.exporters.npu.weights import npu_weights
from edgekit.quant.calibration import calibration_sequences, read_text, token_windows
from edgekit.quant.pipeline import quantize_checkpoint
from edgekit.quant.recipe import DEFAULT_RECIPE, Recipe
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.testing.demo import smollm2_gguf
from edgekit.testing.offgrid import off_grid_copy

PYTHON_LIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
TEXTS = {"license": PYTHON_LIB / "LICENSE.txt", "textwrap": PYTHON_LIB / "textwrap.py"}
PROFILE_RECIPE = Recipe(algorithm="awq-gptq", bits=4, group_size=32, embedding_bits=8, lm_head_bits=8)


def models(checkpoint, recipe: Recipe, calibration, formats: list[str]):
    """(label, numpy reference model, weight bytes) for each npu format and the cpu default recipe,
    one model in memory at a time."""
    qm = quantize_checkpoint(checkpoint, recipe, calibration)
    weights, bits = qm.weights(), {name: record["bits"] for name, record in qm.records.items()}
    for fmt in formats:
        w = npu_weights(checkpoint.spec, weights, fmt, bits)
        size = sum(encoded.nbytes for _, encoded in w.mats.values()) + sum(a.nbytes for a in w.embedding)
        yield f"npu {fmt}", ReferenceModel(w.reference_spec, w.reference), size
        del w
    del weights, qm
    qm = quantize_checkpoint(checkpoint, DEFAULT_RECIPE, calibration)
    yield "cpu default recipe", ReferenceModel(checkpoint.spec, qm.weights()), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="int8_channel,lpbq32,lpbq64,int4_channel")
    parser.add_argument("--models", default="smollm2,off-grid")
    parser.add_argument("--texts", default="license")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--calibration", help="a calibration text file (default: the model's own samples)")
    parser.add_argument("--symmetric", action="store_true", help="the recipe's 4-bit blocks symmetric")
    parser.add_argument("-o", "--output", default="bench/results/npu_quality.json")
    args = parser.parse_args()

    output = Path(args.output)
    rows = json.loads(output.read_text()) if output.is_file() else []
    source = open_checkpoint(smollm2_gguf())
    tokenizer = source.tokenizer.load()
    texts = {
        t: token_windows(tokenizer.encode(read_text(TEXTS[t])).ids, args.window, args.windows)
        for t in args.texts.split(",")
    }
    recipe = replace(PROFILE_RECIPE, symmetric=args.symmetric)
    for model_name in args.models.split(","):
        checkpoint = source if model_name == "smollm2" else off_grid_copy(source)
        reference = ReferenceModel.from_checkpoint(checkpoint)
        saved: dict = {}

        def source_logits(ids, forward=reference.forward, saved=saved):
            if tuple(ids) not in saved:
                saved[tuple(ids)] = forward(ids)
            return saved[tuple(ids)]

        base = {t: evaluate(ws, source_logits) for t, ws in texts.items()}
        calibration = calibration_sequences(
            checkpoint, recipe.calibration_window, recipe.calibration_samples, args.calibration, reference
        )
        for label, model, size in models(checkpoint, recipe, calibration, args.formats.split(",")):
            for t, ws in texts.items():
                q = evaluate(ws, model.forward, source_logits)
                row = {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "model": model_name,
                    "weights": label,
                    "recipe": "default" if label.startswith("cpu") else f"profile, symmetric={recipe.symmetric}",
                    "text": t,
                    "calibration": Path(args.calibration).name if args.calibration else "self-generated",
                    "ratio": q.perplexity / base[t].perplexity,
                    "perplexity": q.perplexity,
                    "kl": q.kl,
                    "top1": q.top1,
                    "weight_bytes": size,
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
                output.write_text(json.dumps(rows, indent=1))
            del model


if __name__ == "__main__":
    main()
