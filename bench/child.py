"""One measurement in a process of its own, so its peak memory is its own; prints one JSON line.

python bench/child.py version ENGINE
python bench/child.py export ENGINE VARIANT SOURCE_JSON OUT
python bench/child.py speed ENGINE ARTIFACT --threads 2 --prompt 128 --gen 128 --repeat 3
python bench/child.py perplexity ENGINE ARTIFACT WINDOWS_JSON --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np
from engines import ENGINES
from engines.base import huge_pages_mb, peak_rss_mb, source_from_json

from edgekit.evaluate import log_softmax


def prompt_ids(n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(0).integers(100, 30000, n)]


def speed(engine, artifact: Path, threads: int, prompt: int, gen: int, repeat: int) -> dict:
    start = time.perf_counter()
    session = engine.open(artifact, threads, prompt + gen + 8)
    load_s = time.perf_counter() - start
    ids = prompt_ids(prompt)
    logits = session.prefill(ids[:16])  # warm-up: first-call allocations and kernel selection
    for _ in range(4):
        logits = session.decode(int(logits.argmax()))
    pp, tg, ttft = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        logits = session.prefill(ids)
        t1 = time.perf_counter()
        for _ in range(gen):
            logits = session.decode(int(logits.argmax()))
        t2 = time.perf_counter()
        pp.append(prompt / (t1 - t0))
        tg.append(gen / (t2 - t1))
        ttft.append(t1 - t0)
    memory = {"peak_rss_mb": peak_rss_mb(), "huge_pages_mb": huge_pages_mb()}
    return {"pp": pp, "tg": tg, "ttft": ttft, "load_s": load_s, **memory}


def perplexity(engine, artifact: Path, windows: list[list[int]], threads: int) -> dict:
    session = engine.open(artifact, threads, max(len(w) for w in windows) + 8, all_logits=True)
    nll, count = 0.0, 0
    for ids in windows:
        log_probs = log_softmax(np.asarray(session.logits_all(ids), dtype=np.float64))[:-1]
        nll -= float(log_probs[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return {"perplexity": math.exp(nll / count), "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["version", "export", "speed", "perplexity"])
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    a = parser.parse_args()
    engine = ENGINES[a.engine]
    if a.action == "version":
        result = {"version": engine.version()}
    elif a.action == "export":
        variant, source_json, out = a.args
        s = json.loads(source_json)
        source = source_from_json(s)
        start = time.perf_counter()
        engine.export(source, variant, Path(out))
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = {"export_seconds": time.perf_counter() - start, "export_peak_rss_mb": max(peak_rss_mb(), children)}
    elif a.action == "speed":
        result = speed(engine, Path(a.args[0]), a.threads, a.prompt, a.gen, a.repeat)
    else:
        windows = json.loads(Path(a.args[1]).read_text())
        result = perplexity(engine, Path(a.args[0]), windows, a.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
