"""A bench script's measurement in a fresh process of its own (its memory, its first-call costs):
the script run again as `python SCRIPT --child ARGS...`, whose last line of output is one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(script: str, args: list[str]) -> dict:
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])
