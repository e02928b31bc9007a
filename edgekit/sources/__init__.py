"""Model sources: a Hugging Face folder, a GGUF file or a hub id, each opened as a Checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..errors import SourceError
from .checkpoint import Checkpoint, TensorInfo, TensorStore, TokenizerFiles
from .hub import download, looks_like_hub_id

__all__ = ["Checkpoint", "TensorInfo", "TensorStore", "TokenizerFiles", "open_checkpoint"]


def open_checkpoint(source: str | Path) -> Checkpoint:
    """Open a model folder (config.json + safetensors), a .gguf file, or a Hugging Face hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        from .hf import open_hf_folder

        return open_hf_folder(path)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if path.suffix.lower() == ".gguf" or magic == b"GGUF":
            from .gguf import open_gguf

            return open_gguf(path)
        raise SourceError(f"{path}: not a model source; pass a Hugging Face model folder or a .gguf file")
    if not path.exists() and looks_like_hub_id(str(source)):
        from .hf import open_hf_folder

        return open_hf_folder(download(str(source)))
    raise SourceError(f"{path}: no such file or folder; pass a Hugging Face model folder or a .gguf file")
