"""Errors that reach the user as one line: what is wrong, where, and what to do."""

from __future__ import annotations


class EdgekitError(Exception):
    """A problem with the user's input or environment. The CLI prints it and exits with code 2."""


class SourceError(EdgekitError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or inconsistent."""


class UnsupportedArchitectureError(EdgekitError):
    """A model family edgekit does not build."""


class MissingDependencyError(EdgekitError):
    """An optional package is needed for this command."""


def require(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this needs the Python package '{module}', which is not installed: pip install 'edgekit[{extra}]'"
        ) from exc
