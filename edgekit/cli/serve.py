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
@load_options
@draft_option
def serve(
    model: str,
    host: str,
    port: int,
    max_waiting: int,
    lookup: bool,
    profile: str,
    threads: int | None,
    max_context: int | None,
    draft: str | None,
) -> None:
    """Serve MODEL over HTTP: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, a
    chat page at /, and /health (503 while the model loads).

    Requests are answered one at a time in arrival order; each prints its tokens/s to stderr.
    """
    from ..serve import serve as run

    overrides = {k: v for k, v in {"threads": threads, "max_context": max_context}.items() if v is not None}
    run(
        model,
        host=host,
        port=port,
        profile=None if profile == "none" else profile,
        max_waiting=max_waiting,
        speculation="lookup" if lookup else None,  # None: a draft's when there is one, else off
        draft=draft,
        log=lambda line: click.echo(line, err=True),
        **overrides,
    )
