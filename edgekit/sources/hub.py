"""Hugging Face Hub ids: downloaded with huggingface_hub when it is installed and online."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import MissingDependencyError, SourceError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text))


def download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise MissingDependencyError(
            f"'{repo_id}' is not a local file or folder; to fetch it from the Hugging Face Hub install "
            "huggingface_hub (pip install 'edgekit[export]'), or pass a local model folder or .gguf file"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_PATTERNS))
    except Exception as exc:  # offline, gated, missing: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(
            f"'{repo_id}' is not a local path and could not be fetched from the Hugging Face Hub ({reason}); "
            "pass a local model folder or .gguf file"
        ) from None
