"""The `edgekit` command. Thin: parse, call the library, print."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from .errors import EdgekitError


class _Group(click.Group):
    """Turns an EdgekitError into one line on stderr and exit code 2 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="edgekit")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export LLMs to small INT4 artifacts for edge devices, and run them."""
    ctx.obj = {"debug": debug}


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _describe(checkpoint) -> dict[str, Any]:
    spec = checkpoint.spec
    tok = checkpoint.tokenizer
    return {
        "source": checkpoint.source,
        "format": checkpoint.format,
        "name": checkpoint.name,
        "architecture": spec.architecture,
        "spec": spec.to_dict(),
        "parameters": checkpoint.parameter_count,
        "size_on_disk": checkpoint.size_on_disk,
        "dtypes": checkpoint.dtypes,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.load().get_vocab_size()},
        "chat_template": tok.chat_template is not None,
        "eos_token_ids": list(checkpoint.eos_token_ids),
    }


_ROPE_KEYS = {
    "none": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position"),
    "yarn": ("factor", "original_max_position", "beta_fast", "beta_slow", "attention_factor"),
}


def _rope_summary(rope: dict[str, Any]) -> str:
    parts = [f"theta={rope['theta']:g}", f"scaling={rope['scaling']}"]
    parts += [f"{k}={rope[k]}" for k in _ROPE_KEYS[rope["scaling"]] if rope[k] is not None]
    if rope["partial_rotary_factor"] != 1.0:
        parts.append(f"partial_rotary_factor={rope['partial_rotary_factor']}")
    if rope["freq_factors"] is not None:
        parts.append(f"per-frequency factors from the file ({len(rope['freq_factors'])})")
    return ", ".join(parts)


@cli.command()
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def inspect(source: str, as_json: bool) -> None:
    """Describe a model: architecture, spec, parameters, size, tokenizer, chat template.

    SOURCE is a Hugging Face model folder, a .gguf file, or a hub id.
    """
    from .sources import open_checkpoint

    info = _describe(open_checkpoint(source))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    spec = info["spec"]
    rope = spec.pop("rope")
    dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(info["dtypes"].items()))
    rows = [
        ("source", f"{info['source']} ({info['format']})"),
        ("name", info["name"]),
        ("architecture", f"{info['architecture']} (family {spec['family']})"),
        ("parameters", f"{info['parameters'] / 1e6:.1f} M"),
        ("size on disk", f"{_human_bytes(info['size_on_disk'])} ({dtypes})"),
        ("tokenizer", f"{info['tokenizer']['kind']}, {info['tokenizer']['vocab_size']} tokens"),
        ("chat template", "yes" if info["chat_template"] else "no"),
        ("eos token ids", ", ".join(map(str, info["eos_token_ids"]))),
    ]
    rows += [(k, str(v)) for k, v in spec.items() if k not in ("family", "architecture")]
    rows.append(("rope", _rope_summary(rope)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@click.argument("source")
@click.option("-p", "--prompt", required=True, help="The prompt; '-' reads it from stdin.")
@click.option("-s", "--system", default=None, help="A system message (chat models).")
@click.option("-n", "--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--raw", is_flag=True, help="Do not apply the chat template.")
def run(source: str, prompt: str, system: str | None, max_new_tokens: int, raw: bool) -> None:
    """Answer one prompt greedily with the numpy reference (fp32) of a checkpoint.

    Streams the answer to stdout and prints token counts and tokens/s to stderr.
    """
    from .generation import TextTokenizer
    from .reference import ReferenceModel
    from .sources import open_checkpoint

    if prompt == "-":
        prompt = sys.stdin.read()
    checkpoint = open_checkpoint(source)
    tokenizer = TextTokenizer(checkpoint.tokenizer, checkpoint.eos_token_ids)
    click.echo(f"loading {checkpoint.name} ({checkpoint.parameter_count / 1e6:.0f} M parameters) ...", err=True)
    model = ReferenceModel.from_checkpoint(checkpoint)
    if raw or tokenizer.chat_template is None:
        ids = tokenizer.encode(prompt)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages)
    if len(ids) >= checkpoint.spec.max_position_embeddings:
        raise EdgekitError(
            f"the prompt has {len(ids)} tokens but the model's context is {checkpoint.spec.max_position_embeddings}; "
            "shorten it"
        )
    max_new_tokens = min(max_new_tokens, checkpoint.spec.max_position_embeddings - len(ids))
    cache = model.new_cache()
    start = time.perf_counter()
    logits = model.forward(ids, cache, all_logits=False)
    prefill_s = time.perf_counter() - start
    out: list[int] = []
    shown = ""
    start = time.perf_counter()
    while len(out) < max_new_tokens:
        token = int(logits[-1].argmax())
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
        text = tokenizer.decode(out)
        if not text.endswith("\ufffd"):  # hold back a character split across tokens
            click.echo(text[len(shown) :], nl=False)
            shown = text
        logits = model.forward([token], cache, all_logits=False)
    decode_s = time.perf_counter() - start
    click.echo()
    click.echo(
        f"prompt: {len(ids)} tokens, {len(ids) / prefill_s:.1f} tokens/s | "
        f"generation: {len(out)} tokens, {len(out) / max(decode_s, 1e-9):.1f} tokens/s (numpy reference, fp32)",
        err=True,
    )


def main() -> None:
    cli(prog_name="edgekit")


if __name__ == "__main__":
    main()
