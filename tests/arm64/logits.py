"""Runs on the device (here: inside the arm64 root, with the bundle's own virtualenv): an artifact's
logits for a prompt and then one cached decode step per given token, loaded the way the bundle's
server loads it (`edgekit.load` with the device profile).

    python logits.py JOB.json OUT.npz
    JOB.json: {"runs": [{"name", "artifact", "profile", "prompt": [ids], "steps": [ids]}]}
OUT.npz holds each run's logits [1 + len(steps), vocab] under its name, and "<name>.seconds"."""

from __future__ import annotations

import json
import platform
import sys
import time

import numpy as np

import edgekit


def run(job: dict) -> tuple[np.ndarray, float]:
    engine = edgekit.load(job["artifact"], profile=job["profile"])
    start = time.perf_counter()
    logits = [engine.runtime.prefill(job["prompt"])]
    logits += [engine.runtime.decode(token) for token in job["steps"]]
    return np.stack(logits), time.perf_counter() - start


def main() -> None:
    jobs = json.loads(open(sys.argv[1]).read())["runs"]
    results = {}
    for job in jobs:
        logits, seconds = run(job)
        results[job["name"]] = logits
        results[f"{job['name']}.seconds"] = np.array(seconds)
        print(f"{job['name']}: {platform.machine()}, {len(job['steps'])} decode steps in {seconds:.1f} s", flush=True)
    np.savez(sys.argv[2], **results)


if __name__ == "__main__":
    main()
