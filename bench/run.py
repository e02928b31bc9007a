"""The benchmark: edgekit and the tools users would otherwise pick, on one machine, in one go.

For each model, every engine makes its own artifacts with its own tool (export time, peak export
memory, size, bits per weight), the first of them is timed the way llama-bench does (a prompt of
--prompt tokens, then --gen tokens one at a time; medians of --repeat; time to first token; peak
memory of the process), and on the real model every artifact is scored on held-out text
(perplexity). Every measurement runs in a child process of its own; the timings come last, in
--rounds rounds that take every artifact in turn, so a slow spell of a shared host does not fall
on one engine only. Results go to
bench/results/suite.json after each step; a second run skips what is already there (--fresh
starts over). bench/report.py turns them into the README's tables and plots.

    python bench/run.py                      # everything (make bench)
    python bench/run.py --models smollm2-135m --engines edgekit,llama.cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from engines import ENGINES
from engines.base import source_from_json

HERE = Path(__file__).parent
ALL = list(ENGINES)
# MLX's CPU backend (all there is off Apple silicon) is far from what MLX is built for; on the
# large shapes it would take most of the hour, so MLX engines run on the real model only.
# optimum's float32 export peaks at about 21 bytes per parameter (10.6 GB at 0.5B): at 1B it
# would not fit this machine's 24 GB.
WITHOUT_MLX = [e for e in ALL if e not in ("edgekit-mlx", "mlx-lm")]
PLAN = {
    "smollm2-135m": {"engines": ALL, "prompt": 128, "gen": 128},
    "qwen2.5-0.5b-shape": {"engines": WITHOUT_MLX, "prompt": 128, "gen": 64},
    "llama-3.2-1b-shape": {"engines": [e for e in WITHOUT_MLX if e != "optimum"], "prompt": 128, "gen": 64},
}
VENVS = {"main": Path(sys.executable), "optimum": HERE.parent / ".venv-optimum" / "bin" / "python"}


class Suite:
    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.started = time.time()
        self.data = json.loads(path.read_text()) if path.is_file() and not fresh else {}
        for key in ("artifacts", "speed", "quality"):
            self.data.setdefault(key, [])

    def find(self, table: str, **key) -> dict | None:
        return next((r for r in self.data[table] if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, table: str, row: dict) -> None:
        self.drop({k: row[k] for k in ("model", "engine", "variant")}, (table,))
        self.data[table].append(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))

    def drop(self, key: dict, tables: tuple[str, ...]) -> None:
        for table in tables:
            self.data[table] = [r for r in self.data[table] if any(r.get(k) != v for k, v in key.items())]

    def log(self, message: str) -> None:
        elapsed = int(time.time() - self.started)
        print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {message}", flush=True)


def child(engine: str, *args: str, threads: int = 2, **options) -> dict:
    python = VENVS[ENGINES[engine].venv]
    if not python.is_file():
        raise RuntimeError(f"{python} is missing (make bench builds it)")
    command = [str(python), str(HERE / "child.py"), args[0], engine, *args[1:], "--threads", str(threads)]
    for key, value in options.items():
        command += [f"--{key}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_read_gbs(threads: int = 2) -> float:
    """Bytes read per second from a 1 GiB buffer by `threads` threads (numpy's max releases the GIL),
    best of 5: what a decode step, which reads every weight once, can at most stream."""
    import threading

    buffer = np.ones(2**28, dtype=np.float32)
    parts = np.array_split(buffer, threads)
    best = float("inf")
    for _ in range(5):
        workers = [threading.Thread(target=part.max) for part in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "memory_read_gbs": round(max(memory_read_gbs(1), memory_read_gbs(2)), 1),
    }


@dataclass
class SpeedJob:
    key: dict
    version: str
    artifact: Path
    prompt: int
    gen: int
    headline: bool  # the engine's first artifact, the one its comparison lines use
    rounds: list[dict] = field(default_factory=list)


def measure_speed(suite: Suite, jobs: list[SpeedJob], rounds: int, repeat: int) -> None:
    """Every artifact timed in `rounds` rounds, each round one process per artifact in turn: the host's
    slow and fast minutes then fall on every engine alike, and within a round each model's headline
    artifacts go back to back, a few seconds apart, so the per-round ratios between engines compare
    like with like. Per artifact: the median over rounds of each round's median of `repeat` runs."""
    models = list(dict.fromkeys(job.key["model"] for job in jobs))
    jobs = sorted(jobs, key=lambda job: (models.index(job.key["model"]), not job.headline))
    for r in range(rounds):
        for job in jobs:
            k = job.key
            suite.log(
                f"{k['model']} / {k['engine']} {k['variant']}: pp{job.prompt} tg{job.gen}, round {r + 1}/{rounds}"
            )
            try:
                job.rounds.append(
                    child(k["engine"], "speed", str(job.artifact), prompt=job.prompt, gen=job.gen, repeat=repeat)
                )
            except RuntimeError as error:
                suite.log(f"  failed: {error}")
    for job in jobs:
        if not job.rounds:
            continue
        per_round = {m: [statistics.median(r[m]) for r in job.rounds] for m in ("pp", "tg", "ttft")}
        suite.add("speed", {
            **job.key, "version": job.version, "date": time.strftime("%Y-%m-%d"),
            "pp": statistics.median(per_round["pp"]), "tg": statistics.median(per_round["tg"]),
            "ttft_ms": 1000 * statistics.median(per_round["ttft"]),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in job.rounds),
            "load_s": statistics.median(r["load_s"] for r in job.rounds),
            "huge_pages_mb": statistics.median(r.get("huge_pages_mb", 0.0) for r in job.rounds),
            "rounds": per_round, "repeat": repeat,
        })  # fmt: skip
        suite.log(
            f"{job.key['model']} / {job.key['engine']} {job.key['variant']}: prefill "
            f"{statistics.median(per_round['pp']):.0f} tok/s, decode {statistics.median(per_round['tg']):.1f} tok/s"
        )


def run_model(suite: Suite, name: str, engines: list[str], args, timings: list[SpeedJob]) -> None:
    """Exports and perplexities of one model; its speed measurements are appended to `timings`."""
    plan = PLAN[name]
    suite.log(f"{name}: preparing the source")
    work = args.work / "sources"
    command = [sys.executable, str(HERE / "sources.py"), name, str(work), "--eval-windows", str(args.eval_windows)]
    info = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    params = info.pop("parameters")
    source = source_from_json(info)
    suite.data.setdefault("models", {})[name] = {"parameters": params, "real": source.real, **plan}
    windows_file = work / f"{name}-eval.json"
    eval_tokens = sum(len(w) - 1 for w in json.loads(windows_file.read_text())) if source.real else 0
    source_json = json.dumps(info)
    for engine_name in (e for e in plan["engines"] if e in engines):
        engine = ENGINES[engine_name]
        try:
            version = child(engine_name, "version")["version"]
        except RuntimeError as error:
            suite.log(f"{name} / {engine_name}: not measured ({error})")
            suite.data.setdefault("skipped", {})[f"{name}/{engine_name}"] = str(error)
            continue
        for variant in engine.variants(source):
            if args.variants and variant not in args.variants:
                continue
            key = {"model": name, "engine": engine_name, "variant": variant}
            out = args.work / name / engine_name / variant
            row = suite.find("artifacts", **key)
            if row is None or "error" in row or not out.exists():
                suite.log(f"{name} / {engine_name} {variant}: export")
                shutil.rmtree(out, ignore_errors=True)
                try:
                    row = {**key, "version": version, **child(engine_name, "export", variant, source_json, str(out))}
                except RuntimeError as error:
                    suite.add("artifacts", {**key, "version": version, "error": str(error)})
                    suite.log(f"  failed: {error}")
                    continue
                size = sum(p.stat().st_size for p in engine.model_files(out))
                row.update(megabytes=size / 1e6, bits_per_weight=8 * size / params)
                suite.add("artifacts", row)
                suite.drop(key, ("speed", "quality"))  # measured on an artifact that is gone
                suite.log(
                    f"  {row['megabytes']:.1f} MB, {row['bits_per_weight']:.2f} bits/weight, "
                    f"{row['export_seconds']:.0f} s, peak {row['export_peak_rss_mb']:.0f} MB"
                )
            speed_variants = engine.speed_variants(source)
            if variant in speed_variants and suite.find("speed", **key) is None:
                headline = variant == speed_variants[0]
                timings.append(SpeedJob(key, version, out, plan["prompt"], plan["gen"], headline))
            scored = suite.find("quality", **key)
            if source.real and (scored is None or scored.get("tokens") != eval_tokens):  # new or other text
                suite.log(f"{name} / {engine_name} {variant}: perplexity")
                try:
                    r = child(engine_name, "perplexity", str(out), str(windows_file))
                except RuntimeError as error:
                    suite.log(f"  failed: {error}")
                    continue
                suite.add("quality", {**key, "version": version, **r})
                suite.log(f"  perplexity {r['perplexity']:.3f} over {r['tokens']} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(PLAN))
    parser.add_argument("--engines", default=",".join(ALL))
    parser.add_argument("--variants", type=lambda v: v.split(","), help="only these artifacts (e.g. default,Q4_0)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per speed measurement (one process)")
    parser.add_argument("--rounds", type=int, default=11, help="speed measurements per artifact, interleaved")
    parser.add_argument("--eval-windows", type=int, default=16, help="windows of 256 held-out tokens")
    parser.add_argument("--work", type=Path, default=Path("out/bench"))
    parser.add_argument("-o", "--output", type=Path, default=HERE / "results" / "suite.json")
    parser.add_argument("--fresh", action="store_true", help="measure everything again")
    parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.machine:  # in a child: the bandwidth test's buffers must not count in the parent's peak
        print(json.dumps(machine()))
        return
    engines = args.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES] + [m for m in args.models.split(",") if m not in PLAN]
    if unknown:
        sys.exit(
            f"unknown engine or model: {', '.join(unknown)} (engines: {', '.join(ALL)}; models: {', '.join(PLAN)})"
        )
    suite = Suite(args.output, args.fresh)
    suite.data.update(date=time.strftime("%Y-%m-%d"), threads=2)
    run = {"command": " ".join(["python", *sys.argv]), "date": suite.data["date"]}
    suite.log("measuring memory read bandwidth")
    command = [sys.executable, __file__, "--machine"]
    suite.data["machine"] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    suite.log(f"{suite.data['machine']}")
    run["memory_read_gbs"] = suite.data["machine"]["memory_read_gbs"]  # this host's varies from run to run
    args.work.mkdir(parents=True, exist_ok=True)
    timings: list[SpeedJob] = []
    for name in args.models.split(","):
        run_model(suite, name, engines, args, timings)
    measure_speed(suite, timings, args.rounds, args.repeat)
    # a later run adds to what the file holds (or replaces it: --fresh); each keeps its line
    suite.data.setdefault("runs", []).append({**run, "seconds": round(time.time() - suite.started)})
    args.output.write_text(json.dumps(suite.data, indent=1))
    suite.log(f"done: {args.output}")


if __name__ == "__main__":
    main()
