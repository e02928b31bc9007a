"""What one batched decode step costs by the number of sequences it steps: the ONNX batch
runtime alone (no server, no sampling), best of `--rounds` rounds of 5 steps per size, so that
a shared host's stalls drop out. The ceiling of what continuous batching can gain here.
`--generate`: then what the generation API makes of it, in-process (no HTTP): `edgekit.load(...,
parallel=8)` answering 1 and 8 questions at once from as many threads, 48 greedy tokens each
(`ignore_eos`), prompts included, per round, after a warm-up round.

    python bench/batch_step.py out/smollm2-135m-rtn --threads 2 [--generate]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

from serve_load import cpu_name

from edgekit.artifact import MODEL_FILE, read_manifest
from edgekit.runtimes.base import prefill_slot
from edgekit.runtimes.onnx_batch import OnnxBatchRuntime

SIZES = (1, 2, 4, 6, 8)
QUESTIONS = (
    "What is the capital of France?",
    "Name three colours.",
    "Why is the sky blue?",
    "Write a haiku about rain.",
    "What is 2 + 2?",
    "Tell me about cats.",
    "How do magnets work?",
    "Give me a tip for sleeping well.",
)


def generated_per_second(engine, clients: int, rounds: int) -> list[float]:
    """Rounds of `clients` threads each asking one question at once; generated tokens/s per round."""

    def ask(n: int, counts: list[int]) -> None:
        messages = [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}]
        answer = engine.chat(messages, max_new_tokens=48, temperature=0, ignore_eos=True)
        counts.append(answer.stats.generated_tokens)

    rates = []
    for round_ in range(rounds + 1):
        counts: list[int] = []
        threads = [threading.Thread(target=ask, args=(n, counts)) for n in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if round_:  # the first round warms up
            rates.append(round(sum(counts) / (time.perf_counter() - start), 1))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--history", type=int, default=100, help="positions each sequence holds")
    parser.add_argument("--generate", action="store_true", help="also generate in-process, 1 and 8 at once")
    parser.add_argument("--json", default="bench/results/batch_step.json")
    args = parser.parse_args()

    spec = read_manifest(args.artifact).spec
    batch = OnnxBatchRuntime(Path(args.artifact) / MODEL_FILE, spec, 2048, max(SIZES), threads=args.threads)
    for slot in range(max(SIZES)):
        prefill_slot(batch, slot, list(range(100, 100 + args.history)))
    best: dict[int, float] = {}
    for _ in range(args.rounds):
        for size in SIZES:
            tokens = {slot: 5 for slot in range(size)}
            start = time.perf_counter()
            for _ in range(5):
                for slot in range(size):
                    batch.trim(slot, args.history)
                batch.decode(tokens)
            best[size] = min(best.get(size, float("inf")), (time.perf_counter() - start) / 5)
    rows = [{"sequences": n, "step_ms": round(best[n] * 1000, 2), "tokens_per_s": round(n / best[n], 1)} for n in SIZES]
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_name(),
        "artifact": Path(args.artifact).name,
        "threads": args.threads,
        "rows": rows,
    }
    if args.generate:
        import edgekit

        del batch
        engine = edgekit.load(args.artifact, parallel=max(SIZES), threads=args.threads, prefix_cache_mb=0)
        summary["generate"] = {n: generated_per_second(engine, n, args.rounds // 2) for n in (1, max(SIZES))}
        engine.close()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    for row in rows:
        print(row)
    for clients, rates in summary.get("generate", {}).items():
        print(f"generate, {clients} at once: {rates} tokens/s")


if __name__ == "__main__":
    main()
