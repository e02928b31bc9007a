"""Write any Checkpoint as a Hugging Face model folder (config.json, safetensors, tokenizer files),
so tools that only read HF folders (transformers, peers' exporters) can take a GGUF model too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..families import norm_names, norm_offset
from .checkpoint import Checkpoint
from .safetensors_io import write_safetensors


def save_hf_folder(checkpoint: Checkpoint, folder: str | Path, bf16: bool = False) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**checkpoint.config, "torch_dtype": "bfloat16" if bf16 else "float32"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {name: np.asarray(checkpoint.tensors.get(name), dtype=np.float32) for name in checkpoint.tensors}
    offset = norm_offset(checkpoint.spec.family)
    for name in norm_names(checkpoint.spec) if offset else ():  # back to the family's stored w (gemma: 1 + w)
        tensors[name] = tensors[name] - np.float32(offset)
    write_safetensors(folder / "model.safetensors", tensors, bf16=frozenset(tensors) if bf16 else frozenset())
    checkpoint.tokenizer.write(folder)
    tokenizer_config = dict(checkpoint.tokenizer.config)
    if checkpoint.tokenizer.chat_template:  # older transformers read it only from here
        tokenizer_config["chat_template"] = checkpoint.tokenizer.chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return folder
