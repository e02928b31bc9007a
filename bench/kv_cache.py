"""An int8 KV cache against a float32 one, on two exports of the same weights (one with
--kv-bits 8; ONNX or MLX, whichever the artifacts are): perplexity over 2048 tokens of held-out
prose run in chunks of 256 (each chunk attends to the cache the chunks before it left, as
decoding does), the KV cache's bytes, peak RSS, and decode tokens/s after 512, 2048 and 4000
positions. Each measurement is a fresh process, the two artifacts taken in turn round by round.

    python bench/kv_cache.py FLOAT_ARTIFACT INT8_ARTIFACT [--rounds 3] [-o bench/results/kv_cache.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from fresh_process import run_child

CONTEXTS = (512, 2048, 4000)
PERPLEXITY_TOKENS, CHUNK = 2048, 256


def held_out_ids(artifact: str) -> list[int]:
    sys.path.insert(0, str(Path(__file__).parent))
    from sources import EVAL_FILES, fortunes

    import edgekit

    engine = edgekit.load(artifact, profile=None, max_context=PERPLEXITY_TOKENS + 1)
    return engine.tokenizer.encode(fortunes(EVAL_FILES))[:PERPLEXITY_TOKENS]


def perplexity(artifact: str, ids: list[int], threads: int) -> dict:
    from edgekit.generation.loader import load_runtime

    runtime = load_runtime(artifact, max_context=len(ids), threads=threads).runtime
    nll = []
    for start in range(0, len(ids), CHUNK):
        rows = runtime.verify(ids[start : start + CHUNK])  # every position's logits, after the cache
        targets = ids[start + 1 : start + CHUNK + 1]
        rows = rows[: len(targets)].astype(np.float64)
        top = rows.max(axis=1, keepdims=True)
        log_z = (top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))) if len(targets) else []
        nll += list(log_z - rows[np.arange(len(targets)), targets])
    return {"perplexity": float(np.exp(np.mean(nll))), "tokens": len(nll)}


def decode_speed(artifact: str, context: int, threads: int, steps: int = 64) -> dict:
    import resource

    from edgekit.generation.loader import load_runtime

    runtime = load_runtime(artifact, max_context=context + steps + 1, threads=threads).runtime
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 30000, context)]
    runtime.prefill(ids)
    token = 7
    start = time.perf_counter()
    for _ in range(steps):
        token = int(np.argmax(runtime.decode(token)))
    seconds = time.perf_counter() - start
    return {
        "context": context,
        "tokens_per_s": steps / seconds,
        "kv_cache_mb": runtime.kv_nbytes / 2**20,  # the buffers as allocated (MLX's grow 256 positions at a time)
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(args: list[str]) -> dict:
    return run_child(__file__, args)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, artifact, value, threads = sys.argv[2:6]
        if kind == "perplexity":
            print(json.dumps(perplexity(artifact, json.loads(value), int(threads))))
        else:
            print(json.dumps(decode_speed(artifact, int(value), int(threads))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("float_artifact")
    parser.add_argument("int8_artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    artifacts = {"float32": args.float_artifact, "int8": args.int8_artifact}
    ids = held_out_ids(args.float_artifact)
    quality = {
        name: child(["perplexity", path, json.dumps(ids), str(args.threads)]) for name, path in artifacts.items()
    }
    runs = []
    for r in range(args.rounds):
        names = list(artifacts) if r % 2 == 0 else list(artifacts)[::-1]
        for context in CONTEXTS:
            for name in names:
                result = child(["speed", artifacts[name], str(context), str(args.threads)])
                runs.append({"round": r, "cache": name, **result})
                print(f"round {r} {name} {context}: {result['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    speed = {
        name: {
            context: {
                "median": round(statistics.median(x["tokens_per_s"] for x in rs), 1),
                "range": [round(min(x["tokens_per_s"] for x in rs), 1), round(max(x["tokens_per_s"] for x in rs), 1)],
                "kv_cache_mb": round(rs[0]["kv_cache_mb"], 1),
                "peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in rs), 1),
            }
            for context in CONTEXTS
            if (rs := [x for x in runs if x["cache"] == name and x["context"] == context])
        }
        for name in artifacts
    }
    change = quality["int8"]["perplexity"] / quality["float32"]["perplexity"] - 1
    summary = {"perplexity": quality, "perplexity_change": round(change, 5), "decode": speed}
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.write_text(json.dumps({"rounds": args.rounds, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
