"""What a draft model would buy a bigger target: the time of a verify pass over 1 + k tokens
against one decode step, measured on the target (e.g. the Llama-3.2-1B shape), and the step time
of a draft (e.g. SmolLM2-135M), each in fresh processes taken in turn. From them, the standard
model of speculative decoding: with each proposal accepted with probability a (independently), a
pass of k proposals gives (1 - a^(k+1)) / (1 - a) tokens and costs k draft steps plus a verify of
1 + k tokens; the speed-up is tokens per second against plain decoding's.

    python bench/verify_cost.py TARGET DRAFT [--rounds 3] [--history 256] [-o bench/results/verify_cost.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fresh_process import run_child

KS = range(1, 9)
ACCEPTANCE = (0.5, 0.6, 0.7, 0.8, 0.9)


def measure(artifact: str, history: int, threads: int, repeats: int) -> dict:
    from edgekit.generation.loader import load_runtime

    runtime = load_runtime(artifact, max_context=history + 64, threads=threads).runtime
    prompt = [100 + (i * 7) % 1000 for i in range(history)]
    runtime.prefill(prompt)
    for _ in range(5):  # warm-up: first-call allocations
        runtime.decode(5)
        runtime.trim(history)
        runtime.verify([5, 6, 7])
        runtime.trim(history)

    def timed(call) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
            runtime.trim(history)
        return statistics.median(times) * 1000

    step = timed(lambda: runtime.decode(5))
    verify = {k: timed(lambda k=k: runtime.verify(list(range(5, 6 + k)))) for k in KS}
    return {"step_ms": round(step, 3), "verify_ms": {k: round(v, 3) for k, v in verify.items()}}


def child(args: list[str]) -> dict:
    return run_child(__file__, args)


def speedup(a: float, k: int, step: float, verify: float, draft: float) -> float:
    tokens = (1 - a ** (k + 1)) / (1 - a)
    return tokens * step / (k * draft + verify)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        artifact, history, threads, repeats = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(measure(artifact, history, threads, repeats)))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("draft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"target": [], "draft": []}
    for r in range(args.rounds):
        order = ("target", "draft") if r % 2 == 0 else ("draft", "target")
        for role in order:
            path = args.target if role == "target" else args.draft
            result = child([path, str(args.history), str(args.threads), str(args.repeats)])
            runs[role].append(result)
            print(f"round {r} {role}: step {result['step_ms']} ms, verify {result['verify_ms']}", file=sys.stderr)
    step = statistics.median(r["step_ms"] for r in runs["target"])
    draft = statistics.median(r["step_ms"] for r in runs["draft"])
    verify = {k: statistics.median(r["verify_ms"][str(k)] for r in runs["target"]) for k in KS}
    summary = {
        "target_step_ms": step,
        "draft_step_ms": draft,
        "draft_step_in_target_steps": round(draft / step, 3),
        "verify_in_target_steps": {1 + k: round(v / step, 3) for k, v in verify.items()},
        "speedup_at_best_k": {},
    }
    for a in ACCEPTANCE:
        best = max(KS, key=lambda k: speedup(a, k, step, verify[k], draft))
        summary["speedup_at_best_k"][a] = {"k": best, "speedup": round(speedup(a, best, step, verify[best], draft), 3)}
    print(json.dumps(summary, indent=1))
    if args.output:
        meta = {"target": args.target, "draft": args.draft, "history": args.history, "rounds": args.rounds}
        args.output.write_text(json.dumps({**meta, "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
