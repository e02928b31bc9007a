"""Hugging Face model folders: config.json, (sharded) safetensors, tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ..spec import spec_from_config
from .checkpoint import Checkpoint, TensorInfo, TensorStore, TokenizerFiles, canonical_norms, check_tensors
from .safetensors_io import SafetensorsFile


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc}); the file is corrupt") from None


class SafetensorsStore(TensorStore):
    """Tensors spread over one or more safetensors files."""

    def __init__(self, files: list[Path]):
        self.files = [SafetensorsFile(p) for p in files]
        self._where: dict[str, SafetensorsFile] = {}
        self._infos: dict[str, TensorInfo] = {}
        for f in self.files:
            for name, t in f.tensors.items():
                self._where[name] = f
                self._infos[name] = TensorInfo(name, t.shape, t.dtype, t.end - t.begin)

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self._where[name].convert(name, self._where[name].raw(name)[start:stop])

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self._where[name].convert(name, self._where[name].raw(name)[rows])

    def release(self, name: str) -> None:
        self._where[name].release(name)


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SourceError(f"{index}: no 'weight_map' object; the index is corrupt")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SourceError(f"{index}: shard {missing[0]} is listed but not in {folder}; download all shards")
        return [folder / n for n in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    hint = (
        " (PyTorch .bin weights are not read: save the model with safe_serialization=True)"
        if any(folder.glob("*.bin"))
        else ""
    )
    raise SourceError(f"{folder}: no *.safetensors weights found{hint}")


def chat_template_of(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if template is None and (folder / "chat_template.json").is_file():
        template = read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def read_tokenizer_files(folder: Path) -> TokenizerFiles:
    path = folder / "tokenizer.json"
    if not path.is_file():
        hint = (
            " (only tokenizer.model found: convert it once with transformers' AutoTokenizer and save_pretrained)"
            if (folder / "tokenizer.model").is_file()
            else ""
        )
        raise SourceError(f"{folder}: no tokenizer.json; the model folder needs its tokenizer files{hint}")
    text = path.read_text(encoding="utf-8")
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_str(text)
    except Exception as exc:
        raise SourceError(f"{path}: the tokenizers library cannot read it ({exc}); the file is corrupt") from None
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    generation = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    return TokenizerFiles(text, config, chat_template_of(folder, config), generation)


def open_hf_folder(folder: Path) -> Checkpoint:
    config_path = folder / "config.json"
    if (folder / "edgekit.json").is_file() or (folder / "genai_config.json").is_file():
        raise SourceError(
            f"{folder}: an exported artifact, not a source checkpoint; run it (`edgekit run`, "
            "edgekit.load) or export again from the original checkpoint"
        )
    if not config_path.is_file():
        raise SourceError(
            f"{folder}: no config.json; pass a Hugging Face model folder (config.json + *.safetensors) or a .gguf file"
        )
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise SourceError(f"{config_path}: expected a JSON object")
    if "quantization" in config:
        raise SourceError(
            f"{folder}: an MLX quantized model (mlx-lm layout), not a source checkpoint; run it "
            "(`edgekit run`, edgekit.load) or export from the unquantized Hugging Face checkpoint"
        )
    spec = spec_from_config(config, str(config_path))
    store = canonical_norms(spec, SafetensorsStore(safetensors_files(folder)))
    check_tensors(spec, store, str(folder))
    tokenizer = read_tokenizer_files(folder)
    return Checkpoint(spec, store, tokenizer, config, str(folder), "hf", name=folder.name)
