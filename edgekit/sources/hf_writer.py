"""Write any Checkpoint as a Hugging Face model folder (config.json, safetensors, tokenizer files),
so tools that only read HF folders (transformers, peers' exporters) can take a GGUF model too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..families import norm_names, norm_offset
from ..spec import ModelSpec
from .checkpoint import Checkpoint
from .safetensors_io import write_safetensors


def as_stored(spec: ModelSpec, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors as edgekit reads them (norms as multipliers) -> as the family's HF folders store
    them: gemma's w for the multiplier 1 + w."""
    offset = norm_offset(spec.family)
    if not offset:
        return tensors
    norms = set(norm_names(spec))
    return {name: a - np.float32(offset) if name in norms else a for name, a in tensors.items()}


def save_hf_folder(checkpoint: Checkpoint, folder: str | Path, bf16: bool = False) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**checkpoint.config, "torch_dtype": "bfloat16" if bf16 else "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {name: np.asarray(checkpoint.tensors.get(name), dtype=np.float32) for name in checkpoint.tensors}
    tensors = as_stored(checkpoint.spec, tensors)
    write_safetensors(folder / "model.safetensors", tensors, bf16=frozenset(tensors) if bf16 else frozenset())
    checkpoint.tokenizer.write(folder)
    tokenizer_config = dict(checkpoint.tokenizer.config)
    if checkpoint.tokenizer.chat_template:  # older transformers read it only from here
        tokenizer_config["chat_template"] = checkpoint.tokenizer.chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return folder
