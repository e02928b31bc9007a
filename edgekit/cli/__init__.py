"""The `edgekit` command line."""

from . import deploy, devices, distill, generate, models, serve  # noqa: F401  (each registers its commands)
from .app import cli, main

__all__ = ["cli", "main"]
