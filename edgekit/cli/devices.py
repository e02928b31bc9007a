"""`edgekit devices`: the shipped device profiles, and which one fits this machine and why."""

from __future__ import annotations

import json

import click

from .app import cli


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles and the match as JSON.")
def devices(as_json: bool) -> None:
    """List the device profiles; '*' marks the one `--profile auto` picks here."""
    from ..device_profiles import best_match, gather, match, shipped_profiles

    facts = gather()
    profiles = list(shipped_profiles())
    best = best_match(profiles, facts)
    matches = [match(p, facts) for p in profiles]
    if as_json:
        rows = [
            {
                "name": m.profile.name,
                "description": m.profile.description,
                "format": m.profile.export.format,
                "flavor": None if m.profile.export.format == "mlx" else m.profile.export.flavor,
                "matches": m.matched,
                "selected": best is not None and m.profile.name == best.profile.name,
                "auto": m.profile.auto,
                "reasons": list(m.reasons),
            }
            for m in matches
        ]
        click.echo(json.dumps({"machine": facts.summary(), "profiles": rows}, indent=2))
        return
    click.echo(f"this machine: {facts.summary()}")
    width = max(len(p.name) for p in profiles)
    for m in matches:
        mark = "*" if best is not None and m.profile.name == best.profile.name else " "
        settings = m.profile.export
        export = settings.format if settings.format == "mlx" else f"{settings.format}/{settings.flavor}"
        why = ("matches: " if m.matched else "") + "; ".join(m.reasons)
        if not m.profile.auto:
            why += " (used only by name)"
        click.echo(f"{mark} {m.profile.name:<{width}}  {export:<9}  {why}")
        click.echo(f"  {'':<{width}}  {'':<9}  {m.profile.description}")
