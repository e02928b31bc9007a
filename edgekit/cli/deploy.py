"""`edgekit bundle`: a folder to copy to a device that serves an artifact there."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .app import cli


class _ProgressLine:
    """One status line on stderr, rewritten in place on a terminal; elsewhere silent (the stage
    lines say what happens)."""

    def __init__(self) -> None:
        self.live = sys.stderr.isatty()
        self.shown = False

    def __call__(self, step) -> None:
        if not self.live:
            return
        if step.unit == "B":
            amount = f"{step.done / 1e6:.1f} / {step.total / 1e6:.1f} MB"
        else:
            amount = f"{step.done}" if step.total is None else f"{step.done}/{step.total}"
        click.echo(f"\r\x1b[K  {step.task}: {amount} {step.item}", nl=False, err=True)
        self.shown = True

    def end(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.shown = False


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--target",
    required=True,
    help="Device profile to bundle for: one with a [bundle] table (raspberry-pi-5, raspberry-pi-4) or a .toml file.",
)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The bundle folder to write.")
@click.option(
    "--python",
    "python_version",
    default=None,
    help="The device's CPython, e.g. 3.11 for Raspberry Pi OS Bookworm [default: the profile's; 3.13, Trixie].",
)
@click.option("--wheels", is_flag=True, help="Also download every pinned wheel into wheels/ to install offline.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--with",
    "extras",
    multiple=True,
    help="An optional part of edgekit for the device too (repeatable): structured (JSON schemas, grammars, tools).",
)
def bundle(
    artifact: Path,
    target: str,
    output: Path,
    python_version: str | None,
    wheels: bool,
    overwrite: bool,
    extras: tuple[str, ...],
) -> None:
    """Make a folder that serves ARTIFACT on a device as an OpenAI-compatible server.

    It holds the artifact, requirements.txt (the runtime's packages for the device's platform and
    Python: exact versions with sha256), edgekit as a wheel, run.sh, install.sh, a systemd unit and
    a README with the three commands that start it on the device. Resolving needs the package index.
    """
    from ..deploy import build_bundle

    line = _ProgressLine()

    def stage(message: str) -> None:
        line.end()
        click.echo(message, err=True)

    try:
        result = build_bundle(
            artifact,
            output,
            target,
            python=python_version,
            wheels=wheels,
            overwrite=overwrite,
            extras=extras,
            stage=stage,
            progress=line,
        )
    finally:
        line.end()
    extra = ", wheels/" if result.has_wheels else ""
    click.echo(
        f"wrote {result.path}: model {result.model_bytes / 1e6:.1f} MB, {len(result.pins)} packages for "
        f"{result.target.describe()} ({result.target.name}), {result.wheel}{extra}, run.sh, install.sh, "
        f"edgekit.service ({result.seconds:.0f} s)"
    )
    click.echo("on the device (see README.md there; your user and the device's address):")
    click.echo(f"  scp -r {result.path} pi@raspberrypi.local:")
    click.echo(f"  ssh -t pi@raspberrypi.local sudo ./{result.path.name}/install.sh")
    click.echo("  curl http://raspberrypi.local:8080/v1/models")
