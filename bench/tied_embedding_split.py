"""Where a tied embedding's 4-bit loss sits: in the lookup or in the lm_head.

Quantizes the default recipe (rotated, self-generated calibration, cached by quality_selfcal.py)
and scores three models on the held-out windows of quality_selfcal.py against the source: the
artifact as it is (one 4-bit matrix for both), the lookup given the float (rotated) embedding with
the lm_head 4-bit, and the lookup 4-bit with the lm_head float (the model untied for the probe).

    python bench/tied_embedding_split.py [--models smollm2,off-grid] [-o FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import quality_selfcal as qs  # noqa: E402

from edgekit.evaluate import evaluate  # noqa: E402
from edgekit.families import EMBED, LM_HEAD  # noqa: E402
from edgekit.quant.pipeline import quantize_checkpoint  # noqa: E402
from edgekit.quant.recipe import DEFAULT_RECIPE  # noqa: E402
from edgekit.quant.rotate import RotatedResidual, random_rotation  # noqa: E402
from edgekit.reference import ReferenceModel  # noqa: E402
from edgekit.sources import open_checkpoint  # noqa: E402
from edgekit.testing.demo import smollm2_gguf  # noqa: E402
from edgekit.testing.offgrid import off_grid_copy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,off-grid")
    parser.add_argument("-o", "--output", default="bench/results/tied_embedding_split.json")
    args = parser.parse_args()
    source = open_checkpoint(smollm2_gguf())
    texts = qs.held_out_windows(source.tokenizer.load(), ["license", "textwrap"], 512, 4)
    rows = []
    for name in args.models.split(","):
        checkpoint = source if name == "smollm2" else off_grid_copy(source)
        reference = ReferenceModel.from_checkpoint(checkpoint)
        memo = qs.Memo(reference.forward)
        source_perplexity = {t: evaluate(ws, memo).perplexity for t, ws in texts.items()}
        recipe = DEFAULT_RECIPE.with_rotation(True)
        qm = quantize_checkpoint(checkpoint, recipe, qs.self_calibration(checkpoint, name, recipe, reference))
        weights = dict(qm.weights())
        rotation = random_rotation(checkpoint.spec.hidden_size, recipe.rotation_seed)
        float_embedding = RotatedResidual(checkpoint.spec, checkpoint.tensors, rotation).get(EMBED)
        untied = replace(checkpoint.spec, tie_word_embeddings=False)
        variants = {
            "tied, both 4-bit": (checkpoint.spec, weights),
            "lookup float, lm_head 4-bit": (untied, {**weights, EMBED: float_embedding, LM_HEAD: weights[EMBED]}),
            "lookup 4-bit, lm_head float": (untied, {**weights, LM_HEAD: float_embedding}),
        }
        for label, (spec, tensors) in variants.items():
            model = ReferenceModel(spec, tensors)
            for text, windows in texts.items():
                q = evaluate(windows, model.forward, memo)
                ratio = q.perplexity / source_perplexity[text]
                rows.append({"model": name, "variant": label, "text": text, "ratio": ratio, "kl": q.kl})
                print(f"{name} | {label} | {text} x{ratio:.3f} KL {q.kl:.4f}", flush=True)
    Path(args.output).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
