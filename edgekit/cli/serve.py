"""`edgekit serve`: the OpenAI-compatible server and chat page."""

from __future__ import annotations

import click

from .app import cli, draft_option, load_options, model_argument


@cli.command()
@model_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: the network).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--max-waiting",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Requests that may wait for the model; more are answered 503 at once.",
)
@click.option(
    "--lookup",
    is_flag=True,
    help='Speculative decoding by prompt lookup for every request (a request\'s "speculation" overrides it).',
)
@click.option(
    "--parallel",
    default=None,
    type=click.IntRange(1),
    help="Requests generated at once, decoded together [default: the profile's].",
)
@click.option(
    "--kv-cache-mb",
    default=None,
    type=click.IntRange(1),
    help="Budget of their KV cache; each one's context is cut to fit [default: the profile's].",
)
@click.option(
    "--prefix-cache-mb",
    default=None,
    type=click.IntRange(0),
    help="Keys and values of recent prompts kept across requests; 0 = off [default: the profile's].",
)
@load_options
@draft_option
def serve(
    model: str,
    host: str,
    port: int,
    max_waiting: int,
    lookup: bool,
    parallel: int | None,
    kv_cache_mb: int | None,
    prefix_cache_mb: int | None,
    profile: str,
    threads: int | None,
    max_context: int | None,
    draft: str | None,
) -> None:
    """Serve MODEL over HTTP: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, a
    chat page at /, and /health (503 while the model loads).

    Up to --parallel requests generate at once (continuous batching), more wait in arrival order;
    each prints its tokens/s to stderr.
    """
    from ..serve import serve as run

    given = {"threads": threads, "max_context": max_context, "kv_cache_mb": kv_cache_mb}
    overrides = {k: v for k, v in given.items() if v is not None}
    if prefix_cache_mb is not None:
        overrides["prefix_cache_mb"] = prefix_cache_mb
    run(
        model,
        host=host,
        port=port,
        profile=None if profile == "none" else profile,
        max_waiting=max_waiting,
        speculation="lookup" if lookup else None,  # None: a draft's when there is one, else off
        parallel=parallel,
        draft=draft,
        log=lambda line: click.echo(line, err=True),
        **overrides,
    )
