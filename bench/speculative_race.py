"""Speculative decoding side by side with llama.cpp, greedy, on the same prompt tokens: an editing
workload (rewrite / correct / extract from a ~400-token text) and free chat. Engines: edgekit
without speculation, with prompt lookup and (with --draft) with a draft model; llama.cpp (Q4_0 made
by its own quantizer from the same float weights, flash attention on) without speculation and with
llama-cpp-python's prompt-lookup draft (`LlamaPromptLookupDecoding`). Each measurement is a fresh
process; engines take turns in an order that rotates round by round.

    python bench/speculative_race.py ARTIFACT [--draft DRAFT] [--rounds 3] [-o bench/results/speculative_race.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

from fresh_process import run_child

TEXT = (
    "The old lighthouse on the northern cape was built in 1871 by a company of stonemasons from Aberdeen. "
    "For more than a century its lamp was tended by the Macrae family, who lived in the small cottage at "
    "the foot of the tower and kept a log of every ship that passed. In the winter of 1923 a storm tore the "
    "lantern room open, and Ellen Macrae climbed the stairs every hour of the night to keep the flame alive "
    "with oil carried up in buckets. The light was automated in 1987, and the cottage became a museum that "
    "now holds the family's logbooks, a brass telescope and the lens that was replaced in 1954. Visitors can "
    "climb the 132 steps to the gallery from April to October, when the weather allows, and on clear days "
    "they can see the islands forty miles to the west. The museum is run by volunteers from the village, "
    "who also organise a festival every August with boat races, music and a market on the harbour. In 2009 "
    "the tower was repainted in its original red and white bands, and a new path was laid along the cliffs "
    "so that walkers can reach it from the village in about forty minutes. The path passes a colony of "
    "puffins that nest in the grass above the rocks between May and July. Birdwatchers are asked to keep "
    "to the path and to leave their dogs at home during the nesting season. A small cafe in the old "
    "boathouse serves soup, bread and cakes baked in the village, and its windows look out over the bay "
    "where seals often rest on the rocks at low tide."
)
TYPOS = (
    TEXT.replace("century", "centry")
    .replace("stonemasons", "stonemasns")
    .replace("every hour", "evry hour")
    .replace("replaced", "replased")
    .replace("weather", "wether")
    .replace("volunteers", "voluntears")
    .replace("festival", "festivle")
    .replace("original", "orignal")
)
TASKS = {
    "edit: correct": ("edit", f"Correct the spelling mistakes in this text and write it out in full:\n\n{TYPOS}"),
    "edit: rewrite": (
        "edit",
        f"Rewrite this text, replacing the word 'lighthouse' with 'beacon' everywhere; change nothing else:\n\n{TEXT}",
    ),
    "edit: extract": (
        "edit",
        f"{TEXT}\n\nQuote, word for word, every sentence of the text above that mentions a year.",
    ),
    "chat: story": ("chat", "Write a short story about a girl who finds a key in the snow."),
    "chat: explain": ("chat", "Explain how a refrigerator keeps food cold, step by step."),
    "chat: advice": ("chat", "Give me five tips for learning to play the guitar as an adult."),
}
ENGINES = ("edgekit", "edgekit lookup", "edgekit draft", "llama.cpp", "llama.cpp lookup")


def prompt_ids(artifact: str, task: str) -> list[int]:
    import edgekit

    engine = edgekit.load(artifact, profile=None)
    return engine.prompt_ids([{"role": "user", "content": TASKS[task][1]}])


def run_edgekit(artifact: str, draft: str | None, mode: str, ids: list[int], threads: int, new: int) -> dict:
    import edgekit

    engine = edgekit.load(artifact, threads=threads, draft=draft if mode == "draft" else None)
    engine.generate("Hello", max_new_tokens=4, speculation=mode)  # warm-up: first-call allocations (a draft's too)
    engine.reset()
    done = engine.generate(ids, max_new_tokens=new, speculation=mode)
    s = done.stats
    return {
        "tokens": s.generated_tokens,
        "decode_tokens_per_s": s.generation_tokens_per_s,
        "proposed": s.proposed_tokens,
        "accepted": s.accepted_tokens,
        "ids": done.token_ids,
    }


def run_llamacpp(gguf: str, lookup: bool, ids: list[int], threads: int, new: int) -> dict:
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    llm = Llama(
        model_path=gguf,
        n_ctx=2048,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,  # as llama.cpp's own tools run it
        draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10) if lookup else None,
        logits_all=lookup,  # its draft path writes every position's logits; without this it overflows at n_batch
        verbose=False,
    )
    llm.create_completion([1, 2, 3], max_tokens=2, temperature=0.0)  # warm-up
    llm.reset()
    out: list[int] = []
    start = first = time.perf_counter()
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if not out:
            first = time.perf_counter()
        if token in (2,) or len(out) >= new:  # SmolLM2's <|im_end|>
            break
        out.append(token)
    end = time.perf_counter()
    del start
    return {
        "tokens": len(out),
        "decode_tokens_per_s": (len(out) - 1) / (end - first) if len(out) > 1 else 0.0,
        "ids": out,
    }


def child(args: dict) -> dict:
    return run_child(__file__, [json.dumps(args)])


def measure(args: dict) -> dict:
    engine, ids = args["engine"], args["ids"]
    if engine.startswith("edgekit"):
        mode = {"edgekit": "off", "edgekit lookup": "lookup", "edgekit draft": "draft"}[engine]
        return run_edgekit(args["artifact"], args["draft"], mode, ids, args["threads"], args["new"])
    return run_llamacpp(args["gguf"], engine.endswith("lookup"), ids, args["threads"], args["new"])


def llamacpp_q4_0(work: Path) -> Path:
    """SmolLM2 as llama.cpp runs it best here: float16 GGUF from the float weights, then its Q4_0."""
    sys.path.insert(0, str(Path(__file__).parent))
    from engines.llamacpp import quantize, write_f16_gguf
    from sources import prepare

    out = work / "smollm2-q4_0.gguf"
    if not out.is_file():
        f16 = work / "smollm2-f16.gguf"
        write_f16_gguf(prepare("smollm2-135m", work), f16)
        quantize(f16, out, "Q4_0")
        f16.unlink()
    return out


def summarize(runs: list[dict], engines: list[str]) -> dict:
    table: dict = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        row: dict = {}
        for engine in engines:
            rs = [r for r in runs if r["task"] == task and r["engine"] == engine]
            speeds = [r["decode_tokens_per_s"] for r in rs]
            row[engine] = {
                "median": round(statistics.median(speeds), 1),
                "range": [round(min(speeds), 1), round(max(speeds), 1)],
                "tokens": rs[0]["tokens"],
                "output": hashlib.sha256(json.dumps(rs[0]["ids"]).encode()).hexdigest()[:12],
                "same_every_round": len({json.dumps(r["ids"]) for r in rs}) == 1,
            }
            if "proposed" in rs[0]:
                row[engine]["accepted_of_proposed"] = [rs[0]["accepted"], rs[0]["proposed"]]
        for own, base in (
            ("edgekit lookup", "edgekit"),
            ("edgekit draft", "edgekit"),
            ("llama.cpp lookup", "llama.cpp"),
        ):
            if own in row and base in row:
                ratios = [
                    a["decode_tokens_per_s"] / b["decode_tokens_per_s"]
                    for a, b in zip(
                        [r for r in runs if r["task"] == task and r["engine"] == own],
                        [r for r in runs if r["task"] == task and r["engine"] == base],
                        strict=True,
                    )
                ]
                row[own]["ratio_to_own_plain"] = round(statistics.median(ratios), 3)
                row[own]["ratio_range"] = [round(min(ratios), 3), round(max(ratios), 3)]
                plain = [r for r in runs if r["task"] == task and r["engine"] == base][0]["ids"]
                mine = [r for r in runs if r["task"] == task and r["engine"] == own][0]["ids"]
                same = next((i for i, (x, y) in enumerate(zip(plain, mine, strict=False)) if x != y), None)
                row[own]["identical_to_plain"] = plain == mine
                row[own]["first_difference_at"] = same
        table[task] = row
    return table


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("artifact")
    parser.add_argument("--draft", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--engines", default=",".join(e for e in ENGINES if e != "edgekit draft"))
    parser.add_argument("--work", type=Path, default=Path(".cache/bench-speculative"))
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    engines = args.engines.split(",")
    if args.draft and "edgekit draft" not in engines:
        engines.append("edgekit draft")
    args.work.mkdir(parents=True, exist_ok=True)
    gguf = str(llamacpp_q4_0(args.work)) if any(e.startswith("llama.cpp") for e in engines) else None
    tasks = args.tasks.split(",")
    ids = {task: prompt_ids(args.artifact, task) for task in tasks}
    runs = []
    for r in range(args.rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for task in tasks:
            for engine in order:
                spec = {
                    "engine": engine,
                    "artifact": args.artifact,
                    "draft": args.draft,
                    "gguf": gguf,
                    "ids": ids[task],
                    "threads": args.threads,
                    "new": args.new_tokens,
                }
                result = child(spec)
                runs.append({"round": r, "task": task, "engine": engine, "prompt_tokens": len(ids[task]), **result})
                print(f"round {r} {task} {engine}: {result['decode_tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    summary = summarize(runs, engines)
    print(json.dumps(summary, indent=1))
    if args.output:
        args.output.write_text(
            json.dumps({"rounds": args.rounds, "threads": args.threads, "summary": summary, "runs": runs}, indent=1)
        )


if __name__ == "__main__":
    main()
