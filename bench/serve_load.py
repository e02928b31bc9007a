"""Load test of `edgekit serve` on loopback: N concurrent clients send a bounded number of chat
requests (half streaming), then the run stops. Every request must come back answered (200) or
refused with a clear status (503 when the waiting line is full); none may be lost or hang. The
server runs as its own process, as it does on a device.

    python bench/serve_load.py --artifact out/smollm2-135m-cpu --clients 16 --requests 200
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

QUESTIONS = [
    "What is the capital of France?",
    "Name three colors of the rainbow.",
    "What is 12 times 12?",
    "Write one sentence about the sea.",
    "Who wrote Romeo and Juliet?",
    "What do bees make?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not healthy after {timeout} s")


def one_request(port: int, i: int, max_tokens: int, timeout: float) -> dict:
    stream = i % 2 == 1
    body = {
        "model": "edgekit",
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = None
        if stream and response.status == 200:
            data = b""
            while chunk := response.read1(65536):
                if first is None and b'"content":"' in chunk and b'"content":""' not in chunk:
                    first = time.perf_counter() - start
                data += chunk
            ok = data.rstrip().endswith(b"data: [DONE]")
        else:
            data = response.read()
            ok = response.status != 200 or "choices" in json.loads(data)
        return {
            "status": response.status,
            "complete": ok,
            "stream": stream,
            "latency": time.perf_counter() - start,
            "first_token": first,
        }
    except (OSError, http.client.HTTPException) as exc:
        return {"status": f"{type(exc).__name__}", "complete": False, "stream": stream, "latency": None}
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-waiting", type=int, default=32, help="the server's waiting line")
    parser.add_argument("--timeout", type=float, default=300, help="per request: longer counts as hung")
    parser.add_argument("--json", default="bench/results/serve_load.json")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "-m", "edgekit", "serve", args.artifact, "--port", str(port)]
    server = subprocess.Popen(command + ["--max-waiting", str(args.max_waiting)], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready_s = wait_healthy(url, server)
        one_request(port, 0, args.max_tokens, args.timeout)  # warm-up, not counted
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(
                pool.map(lambda i: one_request(port, i, args.max_tokens, args.timeout), range(args.requests))
            )
        wall = time.perf_counter() - start
        with urllib.request.urlopen(url + "/health", timeout=10) as response:
            healthy_after = response.status == 200
    finally:
        server.terminate()
        _, log = server.communicate(timeout=30)

    answered = [r for r in results if r["status"] == 200 and r["complete"]]
    refused = [r for r in results if r["status"] == 503]
    lost = [r for r in results if r not in answered and r not in refused]
    latencies = [r["latency"] for r in answered]
    firsts = [r["first_token"] for r in answered if r["first_token"] is not None]
    answers = [line.split("generation: ")[1].split() for line in log.splitlines() if "generation: " in line][1:]
    speeds = [float(words[2]) for words in answers]  # [1:]: the warm-up request
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {_cpu()}",
        "command": " ".join(["python", "bench/serve_load.py", *sys.argv[1:]]),
        "artifact": Path(args.artifact).name,
        "clients": args.clients,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "ready_s": round(ready_s, 2),
        "answered": len(answered),
        "refused_503": len(refused),
        "lost_or_hung": len(lost),
        "healthy_after": healthy_after,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(answered) / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "first_token_p50_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_token_p99_s": round(percentile(firsts, 0.99), 3) if firsts else None,
        "generation_tokens_per_s_median": round(statistics.median(speeds), 1) if speeds else None,
        "generated_tokens_per_s_total": round(sum(int(words[0]) for words in answers) / wall, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:32} {value}")
    if lost or not healthy_after:
        raise SystemExit(f"{len(lost)} requests lost or hung; healthy after: {healthy_after}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
