"""Commands that generate: run (one prompt), chat (a conversation), bench (llama-bench style speed)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..errors import EdgekitError
from .app import cli, draft_option, generation_config, load_engine, load_options, model_argument, sampling_options


def _stats_line(stats, engine) -> str:
    extra = [f"first token {stats.time_to_first_token * 1000:.0f} ms"]
    if stats.peak_memory_mb is not None:
        extra.append(f"peak {stats.peak_memory_mb:.0f} MB")
    where = engine.backend + (f", profile {engine.profile.name}" if engine.profile else "")
    return f"{stats.summary()} | {', '.join(extra)} ({where})"


def constraint_options(command):
    """--json-schema FILE, --grammar FILE, --regex R, --choice C: what every answer must match."""
    for option in reversed(
        [
            click.option(
                "--json-schema", "json_schema_file", default=None, help="Answer JSON matching this schema file."
            ),
            click.option("--grammar", "grammar_file", default=None, help="Answer in this Lark or GBNF grammar file."),
            click.option("--regex", default=None, help="Answer matching this regular expression."),
            click.option("--choice", "choices", multiple=True, help="Answer with one of these (repeatable)."),
        ]
    ):
        command = option(command)
    return command


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgekitError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None


def _constraint(options: dict[str, Any]) -> dict[str, Any]:
    """Take the constraint options out of `options`, as Engine.generate options (files read and checked)."""
    schema_file, grammar_file = options.pop("json_schema_file"), options.pop("grammar_file")
    regex, choices = options.pop("regex"), options.pop("choices")
    given = {"json_schema": schema_file, "grammar": grammar_file, "regex": regex, "choice": choices or None}
    named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
    if len(named) > 1:
        raise EdgekitError(f"pass one of {', '.join(named)}, not several")
    if schema_file is not None:
        try:
            schema = json.loads(_read(schema_file, "JSON schema"))
        except ValueError as exc:
            raise EdgekitError(f"{schema_file}: not valid JSON ({exc}); pass a JSON schema file") from None
        if not isinstance(schema, dict):
            raise EdgekitError(f"{schema_file}: a JSON schema is an object, this file holds a {type(schema).__name__}")
        return {"json_schema": schema}
    if grammar_file is not None:
        return {"grammar": _read(grammar_file, "grammar")}
    if regex is not None:
        return {"regex": regex}
    return {"choices": list(choices)} if choices else {}


def _engine(model: str, options: dict[str, Any]):
    """Load MODEL with the load options, the rest of `options` being generation options."""
    where = [options.pop(k) for k in ("profile", "threads", "max_context", "draft")]
    return load_engine(model, *where, generation_config(**options))


@cli.command()
@model_argument
@click.option("-p", "--prompt", required=True, help="The prompt; '-' reads it from stdin.")
@click.option("-s", "--system", default=None, help="A system message (chat models).")
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
@sampling_options
@constraint_options
@load_options
@draft_option
@click.option("--json", "as_json", is_flag=True, help="Print the completion (text, ids, usage, stats) as JSON.")
def run(model: str, prompt: str, system: str | None, raw: bool, as_json: bool, **options: Any) -> None:
    """Answer one prompt, streaming to stdout; token counts and tokens/s go to stderr.

    MODEL is an exported artifact (ONNX Runtime) or a source checkpoint (the numpy reference in
    fp32: slow, for checking).
    """
    constraint = _constraint(options)
    if prompt == "-":
        prompt = sys.stdin.read()
    engine = _engine(model, options)
    if raw or engine.tokenizer.chat_template is None:
        request: Any = prompt
    else:
        request = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if as_json:
        done = engine.generate(request, **constraint)
        click.echo(
            json.dumps(
                {
                    "text": done.text,
                    "token_ids": done.token_ids,
                    "finish_reason": done.finish_reason,
                    "usage": done.usage,
                    "stats": done.stats.to_dict(),
                },
                indent=2,
            )
        )
        return
    last = None
    for last in engine.stream(request, **constraint):
        click.echo(last.text, nl=False)
    click.echo()
    click.echo(_stats_line(last.stats, engine), err=True)


CHAT_HELP = "commands: /reset forgets the conversation, /exit leaves (or Ctrl-D); Ctrl-C stops an answer"


def _fit_history(engine, messages: list[dict[str, str]], room: int) -> list[dict[str, str]]:
    """Drop the oldest exchanges (never the system message) until the prompt leaves `room` tokens."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    while len(turns) > 1 and len(engine.prompt_ids(system + turns)) + room > engine.max_context:
        turns = turns[2:] if len(turns) > 2 else turns[1:]
    return system + turns


@cli.command()
@model_argument
@click.option("-s", "--system", default=None, help="A system message that starts the conversation.")
@sampling_options
@constraint_options
@load_options
@draft_option
def chat(model: str, system: str | None, **options: Any) -> None:
    """An interactive conversation with MODEL. The history is kept (oldest exchanges dropped when the
    context fills up); the next turn reuses the KV cache of the previous ones. A constraint
    (--json-schema, --grammar, --regex, --choice) holds for every answer."""
    constraint = _constraint(options)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # Windows
        pass
    engine = _engine(model, options)
    if engine.tokenizer.chat_template is None:
        raise EdgekitError(f"{model} has no chat template; use `edgekit run --raw` for plain completion")
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"{engine.name} ({engine.backend}); {CHAT_HELP}", err=True)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            click.echo("\n(Ctrl-D or /exit to leave)", err=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            break
        if text == "/reset":
            messages = list(start)
            engine.reset()
            click.echo("(conversation reset)", err=True)
            continue
        if text.startswith("/"):
            click.echo(f"unknown command {text}; {CHAT_HELP}", err=True)
            continue
        messages = _fit_history(engine, messages + [{"role": "user", "content": text}], options["max_new_tokens"])
        answer, last = [], None
        chunks = engine.stream(messages, **constraint)
        try:
            for last in chunks:
                answer.append(last.text)
                click.echo(last.text, nl=False)
        except KeyboardInterrupt:
            chunks.close()
            click.echo("\n(stopped)", err=True)
        click.echo()
        messages.append({"role": "assistant", "content": "".join(answer)})
        if last is not None and last.stats is not None:
            click.echo(_stats_line(last.stats, engine), err=True)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@cli.command()
@model_argument
@click.option("-p", "--n-prompt", default=512, show_default=True, type=click.IntRange(0), help="Prompt tokens (pp).")
@click.option("-n", "--n-gen", default=128, show_default=True, type=click.IntRange(0), help="Generated tokens (tg).")
@click.option("-r", "--repetitions", default=5, show_default=True, type=click.IntRange(1))
@click.option("-o", "--output", "fmt", default="md", show_default=True, type=click.Choice(["md", "json"]))
@load_options
def bench(
    model: str,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    fmt: str,
    profile: str,
    threads: int | None,
    max_context: int | None,
) -> None:
    """Prompt processing (pp) and token generation (tg) speed, as llama-bench measures them: random
    token ids, end of sequence ignored, mean and standard deviation over repetitions."""
    import numpy as np

    needed = n_prompt + n_gen + 1
    engine = load_engine(model, profile, threads, max_context or needed)
    runtime = engine.runtime
    if needed > runtime.max_context:
        raise EdgekitError(f"pp{n_prompt} + tg{n_gen} needs {needed} positions; the context is {runtime.max_context}")
    ids = [int(i) for i in np.random.default_rng(0).integers(0, engine.vocab_size, max(n_prompt, 1))]
    runtime.reset()
    runtime.prefill(ids[: min(16, len(ids))])  # warm-up: first-run allocations and thread start-up
    rows = []
    if n_prompt:
        times = []
        for _ in range(repetitions):
            runtime.reset()
            start = time.perf_counter()
            runtime.prefill(ids[:n_prompt])
            times.append(time.perf_counter() - start)
        rows.append(("pp", n_prompt, [n_prompt / t for t in times]))
    if n_gen:
        times = []
        for _ in range(repetitions):
            runtime.reset()
            token = ids[0]
            runtime.prefill([token])
            start = time.perf_counter()
            for _ in range(n_gen):
                token = int(runtime.decode(token).argmax())
            times.append(time.perf_counter() - start)
        rows.append(("tg", n_gen, [n_gen / t for t in times]))
    engine.reset()
    folder = Path(model)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else folder.stat().st_size
    info = {
        "model": engine.name,
        "size_mb": round(size / 1e6, 1),
        "backend": engine.backend,
        "profile": engine.profile.name if engine.profile else None,
        "threads": threads,
    }
    results = [
        {
            **info,
            "test": f"{kind}{n}",
            "repetitions": repetitions,
            "tokens_per_s": speeds,
            "mean": _mean_std(speeds)[0],
            "std": _mean_std(speeds)[1],
        }
        for kind, n, speeds in rows
    ]
    if fmt == "json":
        click.echo(json.dumps(results, indent=2))
        return
    click.echo("| model | size | backend | profile | threads | test | t/s |")
    click.echo("|---|---:|---|---|---:|---:|---:|")
    for r in results:
        click.echo(
            f"| {r['model']} | {r['size_mb']:.1f} MB | {r['backend']} | {r['profile'] or '-'} | "
            f"{r['threads'] or 'default'} | {r['test']} | {r['mean']:.2f} ± {r['std']:.2f} |"
        )
