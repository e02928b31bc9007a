"""Two edgekit artifacts timed against each other: pairs of fresh processes (`child.py speed`,
prefill of 128 tokens and 128 decoded, 2 threads) in alternating order, so both see the host's
states alike; prints and writes the per-process medians and the pair-by-pair ratios B / A.

    python bench/ab_speed.py A_ARTIFACT B_ARTIFACT --pairs 10 -o bench/results/NAME.json --what "..."
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

from run import child


def speed(artifact: str, threads: int) -> dict[str, float]:
    try:
        result = child("edgekit", "speed", artifact, threads=threads, prompt=128, gen=128, repeat=3)
    except RuntimeError as error:
        raise SystemExit(f"{artifact}: {error}") from None
    return {"pp": statistics.median(result["pp"]), "tg": statistics.median(result["tg"])}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--what", default="", help="what the two artifacts are, for the record")
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[float]]] = {"a": {"pp": [], "tg": []}, "b": {"pp": [], "tg": []}}
    for pair in range(args.pairs):
        for side in ("a", "b") if pair % 2 == 0 else ("b", "a"):
            measured = speed(getattr(args, side), args.threads)
            for key in ("pp", "tg"):
                runs[side][key].append(measured[key])
        last = {side: f"{r['pp'][-1]:.0f} / {r['tg'][-1]:.1f}" for side, r in runs.items()}
        print(f"pair {pair + 1}: A {last['a']}  B {last['b']} (prefill / decode tokens/s)", flush=True)
    ratios = {key: [b / a for a, b in zip(runs["a"][key], runs["b"][key], strict=True)] for key in ("pp", "tg")}
    record = {
        "date": datetime.date.today().isoformat(),
        "what": args.what,
        "artifacts": {"a": args.a, "b": args.b},
        "per_process_medians": runs,
        "medians": {side: {key: round(statistics.median(v), 1) for key, v in r.items()} for side, r in runs.items()},
        "ratios_b_over_a": {key: summary(v) for key, v in ratios.items()},
    }
    print(json.dumps({k: record[k] for k in ("medians", "ratios_b_over_a")}))
    if args.output:
        args.output.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
