"""Prefill and decode speed, time to first token and peak memory, side by side in one run.

Engines (each measured in its own process, so peak RSS is its own):
- edgekit: an ONNX artifact exported by edgekit (ONNX Runtime, IO-bound KV cache);
- llama.cpp: llama-cpp-python on the same model as GGUF (skipped when not installed);
- onnxruntime-genai: its own runtime on its own builder's int4 export (--genai-artifact; made by
  bench/peer_exports.py; skipped when not installed);
- transformers: fp32 PyTorch on the source checkpoint (skipped when not installed);
- edgekit-mlx: an MLX artifact exported by edgekit (--mlx-artifact), on edgekit's MLX runtime;
- mlx-lm: mlx-lm's own runtime on that same folder, as it loads it (the artifact's float16), and
  mlx-lm-fp32 with its model cast to float32 (what edgekit's runtime computes in on MLX's CPU).

Protocol as llama-bench: a prompt of --prompt-tokens tokens (pp), then --gen-tokens tokens
generated one at a time ignoring end of sequence (tg); --threads threads; medians of --repeat runs.

    python bench/speed.py --artifact out/smollm2-cpu --gguf path/to/model.gguf
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prompt_ids(n: int, vocab: int = 49152) -> list[int]:
    import numpy as np

    return [int(i) for i in np.random.default_rng(0).integers(100, min(vocab, 30000), n)]


def run_edgekit(args, artifact: Path | None = None) -> dict:
    from edgekit.runtimes.loader import load_runtime

    context = args.prompt_tokens + args.gen_tokens + 8
    loaded = load_runtime(artifact or args.artifact, max_context=context, threads=args.threads)
    rt = loaded.runtime
    ids = prompt_ids(args.prompt_tokens, loaded.spec.vocab_size)
    rt.prefill(ids[:16])  # warm up
    rt.reset()
    pp, tg, ttft = [], [], []
    for _ in range(args.repeat):
        rt.reset()
        t0 = time.perf_counter()
        logits = rt.prefill(ids)
        t1 = time.perf_counter()
        for _ in range(args.gen_tokens):
            logits = rt.decode(int(logits.argmax()))
        t2 = time.perf_counter()
        pp.append(len(ids) / (t1 - t0))
        tg.append(args.gen_tokens / (t2 - t1))
        ttft.append(t1 - t0)
    return {"pp": pp, "tg": tg, "ttft": ttft}


def run_llamacpp(args) -> dict:
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(args.gguf),
        n_ctx=args.prompt_tokens + args.gen_tokens + 8,
        n_threads=args.threads,
        n_batch=512,
        verbose=False,
    )
    ids = prompt_ids(args.prompt_tokens)
    pp, tg, ttft = [], [], []
    for _ in range(args.repeat + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        for _ in range(args.gen_tokens):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())
        t2 = time.perf_counter()
        pp.append(len(ids) / (t1 - t0))
        tg.append(args.gen_tokens / (t2 - t1))
        ttft.append(t1 - t0)
    return {"pp": pp[1:], "tg": tg[1:], "ttft": ttft[1:]}


def run_genai(args) -> dict:
    import onnxruntime_genai as og

    config = og.Config(str(args.genai_artifact or args.artifact))
    config.clear_providers()
    model = og.Model(config)
    ids = prompt_ids(args.prompt_tokens)
    pp, tg, ttft = [], [], []
    for _ in range(args.repeat + 1):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=args.prompt_tokens + args.gen_tokens + 1, min_length=0)
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(ids)
        t1 = time.perf_counter()
        for _ in range(args.gen_tokens):
            generator.generate_next_token()
        t2 = time.perf_counter()
        pp.append(len(ids) / (t1 - t0))
        tg.append(args.gen_tokens / (t2 - t1))
        ttft.append(t1 - t0)
    return {"pp": pp[1:], "tg": tg[1:], "ttft": ttft[1:]}


def run_transformers(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(args.prompt_tokens)])
    pp, tg, ttft = [], [], []
    with torch.no_grad():
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            t1 = time.perf_counter()
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(args.gen_tokens):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t2 = time.perf_counter()
            pp.append(ids.shape[1] / (t1 - t0))
            tg.append(args.gen_tokens / (t2 - t1))
            ttft.append(t1 - t0)
    return {"pp": pp, "tg": tg, "ttft": ttft}


def run_mlx_lm(args, float32: bool = False) -> dict:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(args.mlx_artifact))
    if float32:
        model.set_dtype(mx.float32)
    ids = prompt_ids(args.prompt_tokens)
    pp, tg, ttft = [], [], []
    for _ in range(args.repeat):
        cache = make_prompt_cache(model)
        t0 = time.perf_counter()
        logits = model(mx.array(ids)[None], cache=cache)[:, -1, :]
        mx.eval(logits)
        t1 = time.perf_counter()
        for _ in range(args.gen_tokens):
            token = mx.argmax(logits, axis=-1)
            logits = model(token[None], cache=cache)[:, -1, :]
            mx.eval(logits)
        t2 = time.perf_counter()
        pp.append(len(ids) / (t1 - t0))
        tg.append(args.gen_tokens / (t2 - t1))
        ttft.append(t1 - t0)
    return {"pp": pp, "tg": tg, "ttft": ttft}


ENGINES = {
    "edgekit": run_edgekit,
    "llama.cpp": run_llamacpp,
    "onnxruntime-genai": run_genai,
    "transformers": run_transformers,
    "edgekit-mlx": lambda args: run_edgekit(args, args.mlx_artifact),
    "mlx-lm": run_mlx_lm,
    "mlx-lm-fp32": lambda args: run_mlx_lm(args, float32=True),
}
PEERS = {"edgekit": ("llama.cpp", "onnxruntime-genai", "transformers"), "edgekit-mlx": ("mlx-lm", "mlx-lm-fp32")}


def measure_in_subprocess(engine: str, argv: list[str]) -> dict | None:
    result = subprocess.run([sys.executable, __file__, "--engine", engine, *argv], capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{engine}: skipped ({reason})", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument(
        "--genai-artifact",
        type=Path,
        default=None,
        help="onnxruntime-genai's own export [default: edgekit's artifact, which it also loads]",
    )
    parser.add_argument("--mlx-artifact", type=Path, default=None, help="edgekit's MLX export of the same model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--engines", default="edgekit,llama.cpp,onnxruntime-genai,transformers")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/speed.json"))
    args = parser.parse_args()
    if args.engine:  # child process: measure one engine, print JSON
        result = ENGINES[args.engine](args)
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return
    argv = [
        "--artifact",
        str(args.artifact),
        "--gguf",
        str(args.gguf),
        "--threads",
        str(args.threads),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--gen-tokens",
        str(args.gen_tokens),
        "--repeat",
        str(args.repeat),
        *(["--mlx-artifact", str(args.mlx_artifact)] if args.mlx_artifact else []),
    ]
    rows = {}
    for engine in args.engines.split(","):
        r = measure_in_subprocess(engine, argv)
        if r:
            rows[engine] = {
                "pp": statistics.median(r["pp"]),
                "tg": statistics.median(r["tg"]),
                "ttft_ms": 1000 * statistics.median(r["ttft"]),
                "peak_rss_mb": r["peak_rss_mb"],
                "runs": r,
            }
    print(
        f"\nSmolLM2-135M, {args.threads} threads, pp{args.prompt_tokens} / tg{args.gen_tokens}, "
        f"median of {args.repeat}\n"
    )
    print("| engine | prefill tok/s | decode tok/s | TTFT ms | peak RSS MB |")
    print("|---|---|---|---|---|")
    for engine, r in rows.items():
        print(f"| {engine} | {r['pp']:.0f} | {r['tg']:.1f} | {r['ttft_ms']:.0f} | {r['peak_rss_mb']:.0f} |")
    for ours, peers in PEERS.items():
        for engine in peers:
            if ours in rows and engine in rows:
                a, b = rows[ours], rows[engine]
                print(f"{ours} / {engine}: prefill x{a['pp'] / b['pp']:.2f}, decode x{a['tg'] / b['tg']:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d"),
                "threads": args.threads,
                "prompt_tokens": args.prompt_tokens,
                "gen_tokens": args.gen_tokens,
                "rows": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
