"""Speculative decoding by prompt lookup on an exported artifact: decode tokens/s with and without
it, greedy, on copy-heavy tasks (the answer rewrites or edits a given text) and on free
generation, each measurement in a fresh process, the two modes taken in turn round by round; and
what a verify pass costs against a decode step (the cost model behind the adaptive block size).

    python bench/speculative.py ARTIFACT [--rounds 5] [--threads 2] [-o bench/results/speculative.json]
    python bench/speculative.py ARTIFACT --verify-cost       # one process: decode vs verify of 1+k tokens
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from fresh_process import run_child

PASSAGE = (
    "The old lighthouse on the northern cape was built in 1871 by a company of stonemasons from "
    "Aberdeen. For more than a century its lamp was tended by the Macrae family, who lived in the "
    "small cottage at the foot of the tower and kept a log of every ship that passed. In the winter "
    "of 1923 a storm tore the lantern room open, and Ellen Macrae climbed the stairs every hour of "
    "the night to keep the flame alive with oil carried up in buckets. The light was automated in "
    "1987, and the cottage became a museum that now holds the family's logbooks, a brass telescope "
    "and the lens that was replaced in 1954. Visitors can climb the 132 steps to the gallery from "
    "April to October, when the weather allows, and on clear days they can see the islands forty "
    "miles to the west."
)
TYPOS = (
    PASSAGE.replace("century", "centry")
    .replace("stonemasons", "stonemasns")
    .replace("every hour", "evry hour")
    .replace("replaced", "replased")
    .replace("weather", "wether")
)
CODE = """def summarize(orders):
    total = 0
    count = 0
    for order in orders:
        if order["status"] == "paid":
            total += order["amount"]
            count += 1
    average = total / count if count else 0
    return {"total": total, "count": count, "average": average}


def overdue(orders, today):
    late = []
    for order in orders:
        if order["status"] != "paid" and order["due"] < today:
            late.append(order["id"])
    return late
"""

TASKS = {
    "copy: correct the spelling": (
        "copy",
        f"Correct the spelling mistakes in this text and write it out in full:\n\n{TYPOS}",
    ),
    "copy: code edit": (
        "copy",
        f"Rename the parameter `orders` to `invoices` in this Python code and write out the whole code:\n\n{CODE}",
    ),
    "copy: extract": (
        "copy",
        f"{PASSAGE}\n\nQuote the sentences of the text above that mention a year, word for word.",
    ),
    "free: story": ("free", "Write a short story about a girl who finds a key in the snow."),
    "free: explain": ("free", "Explain how a refrigerator keeps food cold, step by step."),
}


def measure(artifact: str, task: str, mode: str, threads: int, new_tokens: int) -> dict:
    import edgekit

    engine = edgekit.load(artifact, threads=threads)
    engine.generate("Hello", max_new_tokens=4)  # warm-up: first-call allocations
    engine.reset()
    done = engine.chat(TASKS[task][1], max_new_tokens=new_tokens, speculation=mode)
    s = done.stats
    return {
        "task": task,
        "mode": mode,
        "tokens": s.generated_tokens,
        "tokens_per_s": s.generation_tokens_per_s,
        "decode_steps": s.decode_steps,
        "proposed": s.proposed_tokens,
        "accepted": s.accepted_tokens,
        "output_sha": hashlib.sha256(json.dumps(done.token_ids).encode()).hexdigest()[:16],
        "text": done.text,
    }


def verify_cost(artifact: str, threads: int, past: int = 400, repeat: int = 40) -> dict:
    """Milliseconds of a decode step and of verify passes of 1 + k tokens at a past of `past`
    positions, best of interleaved batches (this process, one host state)."""
    import edgekit

    runtime = edgekit.load(artifact, threads=threads).runtime
    ids = [int(i) for i in np.random.default_rng(0).integers(100, 30000, past)]
    runtime.prefill(ids)
    sizes = [1, 2, 3, 5, 9]
    best = {n: float("inf") for n in ["decode", *sizes]}
    for _ in range(repeat):
        for n in ["decode", *sizes]:
            runtime.trim(past)
            t0 = time.perf_counter()
            runtime.decode(7) if n == "decode" else runtime.verify([7] * n)
            best[n] = min(best[n], time.perf_counter() - t0)
    decode = best["decode"]
    return {
        "past": past,
        "decode_ms": round(decode * 1e3, 3),
        "verify_ms": {n: round(best[n] * 1e3, 3) for n in sizes},
        "verify_over_decode": {n: round(best[n] / decode, 3) for n in sizes},
    }


def child(args: list[str]) -> dict:
    return run_child(__file__, args)


def summarize(runs: list[dict], tasks: list[str]) -> dict:
    table = {}
    for task in tasks:
        by_mode = {m: [r for r in runs if r["task"] == task and r["mode"] == m] for m in ("off", "lookup")}
        speeds = {m: [r["tokens_per_s"] for r in rs] for m, rs in by_mode.items()}
        ratios = [b / a for a, b in zip(speeds["off"], speeds["lookup"], strict=True)]
        lookup = by_mode["lookup"]
        table[task] = {
            "off_median": round(statistics.median(speeds["off"]), 1),
            "off_range": [round(min(speeds["off"]), 1), round(max(speeds["off"]), 1)],
            "lookup_median": round(statistics.median(speeds["lookup"]), 1),
            "lookup_range": [round(min(speeds["lookup"]), 1), round(max(speeds["lookup"]), 1)],
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "tokens": lookup[0]["tokens"],
            "accepted_of_proposed": [lookup[0]["accepted"], lookup[0]["proposed"]],
            "identical_output": len({r["output_sha"] for rs in by_mode.values() for r in rs}) == 1,
        }
    return table


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, *rest = sys.argv[2:]
        if kind == "cost":
            print(json.dumps(verify_cost(rest[0], int(rest[1]))))
        else:
            artifact, task, mode, threads, new_tokens = rest
            print(json.dumps(measure(artifact, task, mode, int(threads), int(new_tokens))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--verify-cost", action="store_true")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    if args.verify_cost:
        result = child(["cost", args.artifact, str(args.threads)])
        print(json.dumps(result, indent=1))
    else:
        runs = []
        tasks = args.tasks.split(",")
        for r in range(args.rounds):
            for task in tasks:
                order = ("off", "lookup") if r % 2 == 0 else ("lookup", "off")
                for mode in order:
                    runs.append(child(["run", args.artifact, task, mode, str(args.threads), str(args.new_tokens)]))
                    print(f"round {r} {task} {mode}: {runs[-1]['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
        result = {"rounds": args.rounds, "threads": args.threads, "summary": summarize(runs, tasks), "runs": runs}
        print(json.dumps(result["summary"], indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
