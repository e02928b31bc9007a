"""4-bit quality side by side: edgekit's default exports (no calibration file) and the peers' 4-bit
formats, on the same token windows of the held-out texts of bench/quality_selfcal.py, on SmolLM2
and on its off-grid copy, each artifact run by its own runtime.

Every engine makes its artifact with its own tool from an HF folder of the model's float32 weights
(llama.cpp: a float16 GGUF, then its own quantizer, no imatrix; onnxruntime-genai: its model
builder's int4; mlx-lm: `mlx_lm convert -q`; edgekit: `edgekit export` with no calibration file,
ONNX and MLX), in a child process, and scores it in another (bench/child.py perplexity). The
source's perplexity is the numpy reference's on the same windows; the ratio is the artifact's over
it. Bits/weight: the artifact's weight files over the parameter count.

    python bench/quality_peers.py                              # every engine, both models, both texts
    python bench/quality_peers.py --engines llama.cpp --models off-grid

Artifacts stay under --work (a second run reuses them); rows go to -o, one per engine, variant,
model and text.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

from engines import ENGINES
from engines.llamacpp import gguf_pre_tokenizer
from quality_selfcal import held_out_windows
from run import child

from edgekit.evaluate import evaluate
from edgekit.reference import ReferenceModel
from edgekit.sources import open_checkpoint
from edgekit.sources.hf_writer import save_hf_folder
from edgekit.testing.demo import smollm2_gguf
from edgekit.testing.offgrid import off_grid_copy

# (engine, variant): edgekit's defaults first, then the peers' 4-bit formats
ARTIFACTS = [
    ("edgekit", "default"),
    ("edgekit", "layer-tuned"),
    ("edgekit", "g32-key8-tuned"),
    ("edgekit-mlx", "default"),
    ("edgekit-mlx", "rotated"),
    ("edgekit-mlx", "5bit-rotated"),
    ("edgekit-mlx", "6bit"),
    ("edgekit-mlx", "5bit-but-gate-tuned"),
    ("llama.cpp", "Q4_0"),
    ("llama.cpp", "Q4_K_M"),
    ("onnxruntime-genai", "int4"),
    ("mlx-lm", "4bit-g64"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,off-grid")
    parser.add_argument("--texts", default="license,textwrap")
    parser.add_argument("--engines", default=",".join(dict.fromkeys(e for e, _ in ARTIFACTS)))
    parser.add_argument("--variants", default=None, help="only these variants (comma-separated) [default: all]")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("out/quality_peers"))
    parser.add_argument("-o", "--output", default="bench/results/quality_peers.json")
    args = parser.parse_args()
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}; known: {', '.join(ENGINES)}")

    output = Path(args.output)
    results = json.loads(output.read_text()) if output.is_file() else {"rows": []}
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor()}
    gguf = smollm2_gguf()
    smollm2 = open_checkpoint(gguf)
    tokenizer = smollm2.tokenizer.load()
    windows = held_out_windows(tokenizer, args.texts.split(","), args.window, args.windows)
    versions: dict[str, str] = {}
    print("| engine | variant | model | bits/weight | MB | " + " | ".join(f"x source {t}" for t in windows) + " |")
    for model_name in args.models.split(","):
        checkpoint = smollm2 if model_name == "smollm2" else off_grid_copy(smollm2)
        folder = args.work / model_name
        hf = folder / "hf"
        if not (hf / "config.json").is_file():
            save_hf_folder(checkpoint, hf)
        reference = ReferenceModel.from_checkpoint(checkpoint)
        source_perplexity = {}
        for t, ws in windows.items():
            (folder / f"{t}.json").write_text(json.dumps(ws))
            source_perplexity[t] = evaluate(ws, reference.forward).perplexity
        del reference
        source_json = json.dumps(
            {"name": model_name, "hf": str(hf), "real": True, "gguf_pre": gguf_pre_tokenizer(gguf)}
        )
        for engine_name, variant in ARTIFACTS:
            if engine_name not in engines or (args.variants and variant not in args.variants.split(",")):
                continue
            engine = ENGINES[engine_name]
            out = folder / engine_name / variant
            try:
                if engine_name not in versions:
                    versions[engine_name] = child(engine_name, "version")["version"]
                if not out.is_dir():
                    try:
                        child(engine_name, "export", variant, source_json, str(out))
                    except RuntimeError:
                        shutil.rmtree(out, ignore_errors=True)  # a peer's half-written artifact is not reused
                        raise
                size = sum(p.stat().st_size for p in engine.model_files(out))
                scores = {t: child(engine_name, "perplexity", str(out), str(folder / f"{t}.json")) for t in windows}
            except RuntimeError as error:
                print(f"| {engine_name} | {variant} | {model_name} | failed: {error} |", flush=True)
                continue
            bits = 8 * size / checkpoint.parameter_count
            for t, score in scores.items():
                results["rows"] = [
                    r
                    for r in results["rows"]
                    if (r["engine"], r["variant"], r["model"], r["text"]) != (engine_name, variant, model_name, t)
                ]
                results["rows"].append(
                    {
                        "date": time.strftime("%Y-%m-%d %H:%M"),
                        "engine": engine_name,
                        "version": versions[engine_name],
                        "variant": variant,
                        "model": model_name,
                        "text": t,
                        "tokens": score["tokens"],
                        "source_perplexity": source_perplexity[t],
                        "perplexity": score["perplexity"],
                        "ratio": score["perplexity"] / source_perplexity[t],
                        "bits_per_weight": bits,
                        "megabytes": size / 1e6,
                    }
                )
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=1))
            ratios = " | ".join(f"{scores[t]['perplexity'] / source_perplexity[t]:.3f}" for t in windows)
            print(
                f"| {engine_name} | {variant} | {model_name} | {bits:.2f} | {size / 1e6:.1f} | {ratios} |", flush=True
            )


if __name__ == "__main__":
    main()
