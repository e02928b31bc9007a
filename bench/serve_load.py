"""Load test of an OpenAI-compatible server on loopback: N concurrent clients send a bounded number
of chat requests, then the run stops. Every request must come back answered (200) or refused
with a clear status (503 when the waiting line is full); none may be lost or hang. The server runs
as its own process, as it does on a device.

Servers: `edgekit serve` (--parallel N sequences batched, --prefix-cache-mb), llama-cpp-python's
`llama_cpp.server` (one request at a time), and llama.cpp's own `llama-server` (--llama-server
PATH; -np N slots, continuous batching) on a GGUF of the same model.

Workloads: "questions" (short independent chats; throughput, time to first token, latency) and
"chat" (several conversations interleaved, each turn resending its growing history; time to first
token per turn: what a prefix cache saves).

    python bench/serve_load.py --artifact out/smollm2-135m-cpu --clients 16 --requests 200
    python bench/serve_load.py --server llama-server --llama-server PATH --gguf MODEL.gguf --parallel 8
    python bench/serve_load.py --artifact out/smollm2-135m-cpu --workload chat --conversations 8 --turns 10
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
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
SYSTEM = "You are a helpful, concise assistant for a small shop that sells bicycles and spare parts."
FOLLOW_UPS = [
    "Tell me about your cheapest bicycle.",
    "What colors does it come in?",
    "Does it have gears?",
    "How heavy is it?",
    "Can I add a basket?",
    "What about lights for riding at night?",
    "How long does delivery take?",
    "Can I return it if it does not fit?",
    "Do you sell helmets too?",
    "Please sum up what we talked about.",
    "Thanks. One more question: do you repair bikes?",
    "What are your opening hours?",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerSpec:
    """Which server to start and how."""

    kind: str = "edgekit"  # edgekit | llama-cpp-python | llama-server
    artifact: str | None = None  # edgekit
    gguf: str | None = None  # the llama.cpp servers
    llama_server: str | None = None  # the llama-server binary
    parallel: int | None = None  # edgekit --parallel; llama-server -np
    prefix_cache_mb: int | None = None  # edgekit's (0: off)
    threads: int = 2
    context: int = 2048  # per sequence
    max_waiting: int = 32
    extra: list[str] = field(default_factory=list)
    checkout: str | None = None  # edgekit: run the edgekit of this source tree (another branch) instead

    def body(self) -> dict:
        """Request fields this server needs for the same answers as the others: llama_cpp.server
        ignores ignore_eos, so end-of-sequence is masked through logit_bias instead."""
        if self.kind != "llama-cpp-python":
            return {}
        from edgekit.sources import open_checkpoint

        return {"logit_bias": {str(i): -100 for i in open_checkpoint(self.gguf).eos_token_ids}}

    def command(self, port: int) -> list[str]:
        if self.kind == "edgekit":
            cmd = [sys.executable, "-m", "edgekit", "serve", str(Path(self.artifact).resolve()), "--port", str(port)]
            cmd += ["--max-waiting", str(self.max_waiting)]
            if self.parallel is not None:
                cmd += ["--parallel", str(self.parallel)]
            if self.prefix_cache_mb is not None:
                cmd += ["--prefix-cache-mb", str(self.prefix_cache_mb)]
            return cmd + self.extra
        if self.kind == "llama-cpp-python":  # flash attention on: llama-cpp-python turns it off unless asked
            cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--port", str(port)]
            cmd += ["--n_ctx", str(self.context), "--n_threads", str(self.threads), "--flash_attn", "true"]
            # queue a request behind the running one (its default interrupts the running one)
            return cmd + ["--n_batch", "512", "--interrupt_requests", "false"] + self.extra
        if self.kind == "llama-server":
            slots = self.parallel or 1
            cmd = [str(self.llama_server), "-m", str(self.gguf), "--port", str(port), "-t", str(self.threads)]
            cmd += ["-np", str(slots), "-c", str(self.context * slots), "-fa", "on"]
            return cmd + self.extra
        raise SystemExit(f"unknown server {self.kind}; servers: edgekit, llama-cpp-python, llama-server")

    def label(self) -> str:
        if self.kind == "edgekit" and self.checkout:
            return f"edgekit from {self.checkout} ({_commit(self.checkout)})"
        if self.kind == "edgekit":
            cache = "" if self.prefix_cache_mb is None else f", prefix cache {self.prefix_cache_mb} MB"
            return f"edgekit --parallel {self.parallel}{cache}{''.join(' ' + a for a in self.extra)}"
        if self.kind == "llama-server":
            return f"llama-server -np {self.parallel or 1}"
        return "llama_cpp.server"


class Running:
    """A server process on a free port, healthy once started."""

    def __init__(self, spec: ServerSpec, timeout: float = 180):
        self.spec = spec
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(f"/tmp/serve_load_{self.port}.log")
        self.log_file = self.log_path.open("w")
        # `python -m edgekit` imports the package of the directory it runs in
        cwd = Path(spec.checkout).resolve() if spec.checkout else None
        command = spec.command(self.port)
        self.process = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=cwd)
        self.ready_s = self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited before it was ready:\n{self.log_path.read_text()[-3000:]}")
            if self.healthy():
                return time.monotonic() - start
            time.sleep(0.2)
        raise SystemExit(f"the server was not healthy after {timeout} s")

    def healthy(self) -> bool:
        """GET /health answers 200 (edgekit, llama-server: 503 while loading); a server without it
        (llama_cpp.server, which listens once loaded) answers GET /v1/models."""
        for path in ("/health", "/v1/models"):
            try:
                with urllib.request.urlopen(self.url + path, timeout=10) as response:
                    return response.status == 200
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    return False
            except (urllib.error.URLError, OSError):
                return False
        return False

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log_file.close()
        return self.log_path.read_text()


def _commit(tree: str) -> str:
    out = subprocess.run(["git", "-C", tree, "log", "-1", "--format=%h"], capture_output=True, text=True)
    return out.stdout.strip() or "not a git tree"


def chat_request(
    port: int, messages: list[dict], max_tokens: int, stream: bool, timeout: float, extra: dict | None = None
) -> dict:
    """One chat completion; time to first content, latency, generated tokens, the answer's text."""
    body = {
        "model": "m",
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": stream,
        "temperature": 0,
        "ignore_eos": True,  # the same answer lengths for every server (llama-server takes it too)
        **(extra or {}),
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first, tokens, text, cached, ok = None, 0, [], None, False
        if stream and response.status == 200:
            buffer = b""
            chunks = 0
            while data := response.read1(65536):
                buffer += data
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    payload = event.removeprefix(b"data: ").strip()
                    if payload == b"[DONE]":
                        ok = True
                        continue
                    if not payload.startswith(b"{"):
                        continue
                    message = json.loads(payload)
                    for choice in message.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            chunks += 1
                            text.append(content)
                            if first is None:
                                first = time.perf_counter() - start
                    if message.get("usage"):
                        tokens = message["usage"]["completion_tokens"]
                        cached = (message["usage"].get("prompt_tokens_details") or {}).get("cached_tokens")
            tokens = tokens or chunks  # a server without the usage chunk: one token per content chunk
        else:
            data = json.loads(response.read())
            ok = response.status != 200 or "choices" in data
            if response.status == 200:
                tokens = data["usage"]["completion_tokens"]
                text.append(data["choices"][0]["message"]["content"] or "")
        return {
            "status": response.status,
            "complete": ok,
            "stream": stream,
            "latency": time.perf_counter() - start,
            "first_token": first,
            "tokens": tokens,
            "text": "".join(text),
            "cached_tokens": cached,
        }
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        return {"status": f"{type(exc).__name__}", "complete": False, "stream": stream, "latency": None, "tokens": 0}
    finally:
        conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rounded(values: list[float], q: float | None = None) -> float | None:
    if not values:
        return None
    return round(statistics.median(values) if q is None else percentile(values, q), 3)


def questions(
    port: int, clients: int, requests: int, max_tokens: int, timeout: float, streamed: str, extra: dict | None = None
) -> dict:
    """`requests` independent chats from `clients` threads; streamed: "half" or "all"."""

    def one(i: int) -> dict:
        stream = streamed == "all" or i % 2 == 1
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        return chat_request(port, messages, max_tokens, stream, timeout, extra)

    with ThreadPoolExecutor(clients) as pool:  # warm-up, not counted: every batch size this load makes
        list(pool.map(one, range(clients)))
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    answered = [r for r in results if r["status"] == 200 and r["complete"]]
    refused = [r for r in results if r["status"] == 503]
    latencies = [r["latency"] for r in answered]
    firsts = [r["first_token"] for r in answered if r["first_token"] is not None]
    generated = sum(r["tokens"] for r in answered)
    return {
        "clients": clients,
        "requests": requests,
        "max_tokens": max_tokens,
        "answered": len(answered),
        "refused_503": len(refused),
        "lost_or_hung": len(results) - len(answered) - len(refused),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(answered) / wall, 2),
        "generated_tokens": generated,
        "generated_tokens_per_s": round(generated / wall, 1),
        "latency_p50_s": _rounded(latencies),
        "latency_p99_s": _rounded(latencies, 0.99),
        "first_token_p50_s": _rounded(firsts),
        "first_token_p99_s": _rounded(firsts, 0.99),
    }


def conversations(
    port: int,
    count: int,
    turns: int,
    max_tokens: int,
    timeout: float,
    extra: dict | None = None,
    clients: int | None = None,
) -> dict:
    """`count` conversations, each `turns` turns long: every turn resends the system prompt, the
    history and a new question (streamed), so the prompts grow and interleave. `clients` threads
    (default: one per conversation) each take turns over their share of the conversations, one turn
    of each in order. Time to first token by turn."""
    firsts: list[list[float]] = [[] for _ in range(turns)]
    cached: list[list[int]] = [[] for _ in range(turns)]
    prompt_growth: list[int] = []
    failures: list[str] = []
    lock = threading.Lock()
    clients = min(clients or count, count)

    def talk(client: int) -> None:
        mine = range(client, count, clients)
        histories = {c: [{"role": "system", "content": f"{SYSTEM} Customer number {c}."}] for c in mine}
        for turn in range(turns):
            for c, history in list(histories.items()):
                history.append({"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]})
                result = chat_request(port, history, max_tokens, True, timeout, extra)
                if result["status"] != 200 or not result["complete"] or result["first_token"] is None:
                    with lock:
                        failures.append(f"conversation {c} turn {turn + 1}: {result['status']}")
                    del histories[c]
                    continue
                history.append({"role": "assistant", "content": result["text"]})
                with lock:
                    firsts[turn].append(result["first_token"])
                    if result.get("cached_tokens") is not None:
                        cached[turn].append(result["cached_tokens"])
        with lock:
            prompt_growth.extend(len(json.dumps(h)) for h in histories.values())

    start = time.perf_counter()
    threads = [threading.Thread(target=talk, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # staggered: turns of different conversations interleave
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "conversations": count,
        "clients": clients,
        "turns": turns,
        "max_tokens": max_tokens,
        "failed": failures,
        "wall_s": round(wall, 2),
        "first_token_p50_s_by_turn": [_rounded(f) for f in firsts],
        "cached_tokens_median_by_turn": [int(statistics.median(c)) if c else None for c in cached],
        "last_history_chars_median": int(statistics.median(prompt_growth)) if prompt_growth else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="edgekit", choices=["edgekit", "llama-cpp-python", "llama-server"])
    parser.add_argument("--artifact", help="edgekit: the exported artifact")
    parser.add_argument("--gguf", help="llama.cpp's servers: the model")
    parser.add_argument("--llama-server", help="llama.cpp's llama-server binary")
    parser.add_argument("--parallel", type=int, help="sequences decoded at once (edgekit --parallel, llama-server -np)")
    parser.add_argument("--prefix-cache-mb", type=int, help="edgekit's prefix cache (0: off)")
    parser.add_argument("--lookup", action="store_true", help="edgekit: speculation by prompt lookup (serve --lookup)")
    parser.add_argument("--workload", default="questions", choices=["questions", "chat"])
    parser.add_argument("--clients", type=int, default=16, help="chat: threads taking the conversations' turns")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--streamed", default="half", choices=["half", "all"])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-waiting", type=int, default=32, help="the server's waiting line")
    parser.add_argument("--timeout", type=float, default=300, help="per request: longer counts as hung")
    parser.add_argument("--json", default="bench/results/serve_load.json")
    args = parser.parse_args()

    spec = ServerSpec(
        args.server, args.artifact, args.gguf, args.llama_server, args.parallel, args.prefix_cache_mb,
        max_waiting=args.max_waiting, extra=["--lookup"] if args.lookup else [],
    )  # fmt: skip
    server = Running(spec)
    try:
        if args.workload == "chat":
            result = conversations(
                server.port, args.conversations, args.turns, args.max_tokens, args.timeout, spec.body(), args.clients
            )
        else:
            result = questions(
                server.port, args.clients, args.requests, args.max_tokens, args.timeout, args.streamed, spec.body()
            )
        healthy_after = server.healthy()
    finally:
        server.stop()
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {cpu_name()}",
        "command": " ".join(["python", "bench/serve_load.py", *sys.argv[1:]]),
        "server": spec.label(),
        "ready_s": round(server.ready_s, 2),
        **result,
        "healthy_after": healthy_after,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:32} {value}")
    lost = result.get("lost_or_hung") or len(result.get("failed", []))
    if lost or not healthy_after:
        raise SystemExit(f"{lost} requests lost or hung; healthy after: {healthy_after}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
