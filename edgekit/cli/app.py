"""The `edgekit` command group and the options several commands share. Commands stay thin: parse,
call the library, print."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import EdgekitError

if TYPE_CHECKING:  # the commands import the library when they run, so `edgekit --help` starts fast
    from ..generation.engine import Engine, GenerationConfig


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


def _stack(command: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        command = option(command)
    return command


def model_argument(command: Callable) -> Callable:
    """MODEL as the first argument or as -m/--model, like llama.cpp's tools."""

    @functools.wraps(command)
    def wrapper(*args: Any, model: str | None, model_option: str | None, **kwargs: Any) -> Any:
        if (model is None) == (model_option is None):
            raise click.UsageError("give the model once: as the MODEL argument or with -m/--model")
        return command(*args, model=model or model_option, **kwargs)

    return _stack(
        wrapper,
        [
            click.argument("model", required=False),
            click.option("-m", "--model", "model_option", default=None, help="Artifact folder or checkpoint."),
        ],
    )


def load_options(command: Callable) -> Callable:
    """How the model is loaded: the device profile and its runtime settings."""
    return _stack(
        command,
        [
            click.option(
                "--profile",
                default="auto",
                show_default=True,
                help="Device profile: a name from `edgekit devices`, a .toml file, or 'auto' to detect.",
            ),
            click.option("--threads", default=None, type=click.IntRange(1), help="CPU threads [default: profile's]."),
            click.option("--max-context", default=None, type=click.IntRange(16), help="KV cache length."),
        ],
    )


draft_option = click.option(
    "--draft",
    default=None,
    help="A draft model (an artifact with the same tokenizer) for speculative decoding "
    "[default: the profile's]; speculates with it unless --lookup.",
)


def sampling_options(command: Callable) -> Callable:
    """Generation options; every default is the library's GenerationConfig default (greedy)."""
    return _stack(
        command,
        [
            click.option("-n", "--max-new-tokens", default=256, show_default=True, type=click.IntRange(1)),
            click.option("-t", "--temperature", default=0.0, show_default=True, type=click.FloatRange(0)),
            click.option("--top-k", default=0, show_default=True, type=click.IntRange(0), help="0 = off."),
            click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True)),
            click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True)),
            click.option("--repeat-penalty", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True)),
            click.option("--seed", default=None, type=int, help="Same seed, same tokens."),
            click.option("--stop", multiple=True, help="A string that ends the answer (repeatable)."),
            click.option("--ignore-eos", is_flag=True, help="Generate max-new-tokens even past end-of-sequence."),
            click.option(
                "--lookup",
                is_flag=True,
                help="Speculative decoding by prompt lookup: faster when the answer copies the prompt; same output.",
            ),
        ],
    )


def generation_config(**values: Any):
    from ..generation.engine import GenerationConfig

    return GenerationConfig(
        max_new_tokens=values["max_new_tokens"],
        temperature=values["temperature"],
        top_k=values["top_k"],
        top_p=values["top_p"],
        min_p=values["min_p"],
        repetition_penalty=values["repeat_penalty"],
        seed=values["seed"],
        stop=tuple(values["stop"]),
        ignore_eos=values["ignore_eos"],
        speculation="lookup" if values["lookup"] else "off",
    )


def load_engine(
    model: str,
    profile: str,
    threads: int | None,
    max_context: int | None,
    draft: str | None = None,
    config: GenerationConfig | None = None,
) -> Engine:
    """The engine; with a draft (--draft or the profile's), speculation by it unless asked otherwise."""
    from dataclasses import replace

    from ..generation.open_engine import load

    overrides = {k: v for k, v in {"threads": threads, "max_context": max_context}.items() if v is not None}
    engine = load(model, profile=None if profile == "none" else profile, draft=draft, generation=config, **overrides)
    if engine.draft is not None and engine.defaults.speculation == "off":
        engine.defaults = replace(engine.defaults, speculation="draft")
    return engine


def main() -> None:
    cli(prog_name="edgekit")
