"""The serving table: servers x concurrent clients, in alternating rounds (each round starts every
server afresh, in turn), plus the multi-turn chat workload with and without the prefix cache.
Writes bench/results/serve_matrix.json and prints the README's tables (medians over rounds, and
the per-round range).

    python bench/serve_matrix.py --artifact out/smollm2-135m-cpu --gguf SmolLM2.gguf \
        [--llama-server PATH] --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from serve_load import Running, ServerSpec, conversations, cpu_name, questions

CLIENTS = (1, 4, 8, 16)


def throughput_servers(args) -> list[ServerSpec]:
    servers = [ServerSpec("edgekit", args.artifact, checkout=args.baseline)] if args.baseline else []
    servers += [
        ServerSpec("edgekit", args.artifact, parallel=1, prefix_cache_mb=0),  # batching off
        ServerSpec("edgekit", args.artifact, parallel=args.parallel),
        ServerSpec("llama-cpp-python", gguf=args.gguf, context=args.context),
    ]
    if args.llama_server:
        servers.append(
            ServerSpec("llama-server", gguf=args.gguf, llama_server=args.llama_server, parallel=args.parallel)
        )
    return servers


def chat_servers(args) -> list[ServerSpec]:
    servers = [ServerSpec("edgekit", args.artifact, checkout=args.baseline)] if args.baseline else []
    servers += [
        ServerSpec("edgekit", args.artifact, parallel=args.chat_parallel, prefix_cache_mb=0),
        ServerSpec("edgekit", args.artifact, parallel=args.chat_parallel, prefix_cache_mb=256),
    ]
    if args.llama_server:
        servers.append(
            ServerSpec("llama-server", gguf=args.gguf, llama_server=args.llama_server, parallel=args.chat_parallel)
        )
    return servers


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:g}"
    return f"{median:g} ({min(values):g}-{max(values):g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--llama-server")
    parser.add_argument(
        "--baseline", help="a source tree of edgekit before batching (its server answers one at a time)"
    )
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--chat-parallel", type=int, default=4)
    parser.add_argument(
        "--chat-clients", type=int, help="threads taking the conversations' turns (default: one per conversation)"
    )
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--chat-max-tokens", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=["questions", "chat"])
    parser.add_argument("--json", default="bench/results/serve_matrix.json")
    args = parser.parse_args()

    runs: list[dict] = []
    for round_ in range(args.rounds):
        if "questions" not in args.skip:
            for spec in throughput_servers(args):
                server = Running(spec)
                try:
                    for clients in CLIENTS:
                        requests = max(4, args.requests_per_client * clients)
                        result = questions(server.port, clients, requests, args.max_tokens, 600, "all", spec.body())
                        runs.append({"round": round_, "workload": "questions", "server": spec.label(), **result})
                        print(json.dumps(runs[-1]), flush=True)
                    healthy = server.healthy()
                finally:
                    server.stop()
                runs[-1]["healthy_after"] = healthy
        if "chat" not in args.skip:
            for spec in chat_servers(args):
                server = Running(spec)
                try:
                    result = conversations(
                        server.port,
                        args.conversations,
                        args.turns,
                        args.chat_max_tokens,
                        600,
                        spec.body(),
                        clients=args.chat_clients,
                    )
                    healthy = server.healthy()
                finally:
                    server.stop()
                runs.append({"round": round_, "workload": "chat", "server": spec.label(), **result, "healthy": healthy})
                print(json.dumps(runs[-1]), flush=True)

    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_name(),
        "command": " ".join(["python", "bench/serve_matrix.py", *sys.argv[1:]]),
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print(report(runs))


def report(runs: list[dict]) -> str:
    lines = []
    questions_runs = [r for r in runs if r["workload"] == "questions"]
    if questions_runs:
        lines += [
            "| server | clients | generated tokens/s | first token p50 / p99 s | latency p50 / p99 s "
            "| answered / lost |",
            "|---|---|---|---|---|---|",
        ]
        for server in dict.fromkeys(r["server"] for r in questions_runs):
            for clients in CLIENTS:
                rs = [r for r in questions_runs if r["server"] == server and r["clients"] == clients]
                if not rs:
                    continue

                def pick(key: str, rs: list[dict] = rs) -> list:
                    return [r[key] for r in rs]

                lines.append(
                    f"| {server} | {clients} | {spread(pick('generated_tokens_per_s'))} | "
                    f"{spread(pick('first_token_p50_s'))} / {spread(pick('first_token_p99_s'))} | "
                    f"{spread(pick('latency_p50_s'))} / {spread(pick('latency_p99_s'))} | "
                    f"{sum(pick('answered'))} / {sum(pick('lost_or_hung'))} |"
                )
    chat_runs = [r for r in runs if r["workload"] == "chat"]
    if chat_runs:
        turns = chat_runs[0]["turns"]
        shown = [t for t in (1, 2, 5, turns) if t <= turns]
        lines += ["", "| server | " + " | ".join(f"turn {t} first token p50 s" for t in shown) + " | failed |"]
        lines += ["|---|" + "---|" * len(shown) + "---|"]
        for server in dict.fromkeys(r["server"] for r in chat_runs):
            rs = [r for r in chat_runs if r["server"] == server]
            cells = [spread([r["first_token_p50_s_by_turn"][t - 1] for r in rs]) for t in shown]
            lines.append(f"| {server} | " + " | ".join(cells) + f" | {sum(len(r['failed']) for r in rs)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
