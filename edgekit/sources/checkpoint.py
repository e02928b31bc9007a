"""Checkpoint: a ModelSpec, lazily read tensors under canonical HF names, and tokenizer files."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError
from ..families import norm_names, norm_offset
from ..spec import ModelSpec, weight_shapes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # as stored: "BF16", "F32", "Q4_1", ...
    nbytes: int  # bytes on disk


class TensorStore(ABC):
    """Tensors by canonical HF name, read (and dequantized) only when asked for."""

    @abstractmethod
    def infos(self) -> dict[str, TensorInfo]: ...

    @abstractmethod
    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 (a read-only view where the storage allows)."""

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a matrix as float32; stores that can read only those rows do."""
        return np.array(self.get(name)[start:stop], dtype=np.float32)

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """The rows `rows` of a matrix as float32 (an embedding lookup)."""
        return np.array(self.get(name)[rows], dtype=np.float32)

    def release(self, name: str) -> None:
        """A hint that `name` will not be read again soon: a memory-mapped store lets its pages go."""
        return None  # stores that read into memory have nothing to let go

    def __contains__(self, name: object) -> bool:
        return name in self.infos()

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.infos():
            raise KeyError(name)
        return self.get(name)

    def keys(self) -> list[str]:
        return list(self.infos())


class OffsetNorms(TensorStore):
    """A store whose norm weights are read as the multipliers every backend uses: w + offset for a
    family that stores w and multiplies by 1 + w (gemma's Hugging Face folders)."""

    def __init__(self, store: TensorStore, norms: list[str], offset: float):
        self.store, self.norms, self.offset = store, frozenset(norms), np.float32(offset)

    def infos(self) -> dict[str, TensorInfo]:
        return self.store.infos()

    def get(self, name: str) -> np.ndarray:
        values = self.store.get(name)
        return values + self.offset if name in self.norms else values

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.get(name)[start:stop] if name in self.norms else self.store.rows(name, start, stop)

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.get(name)[rows] if name in self.norms else self.store.take(name, rows)

    def release(self, name: str) -> None:
        self.store.release(name)


def canonical_norms(spec: ModelSpec, store: TensorStore) -> TensorStore:
    """`store` with the family's stored norm weights read as multipliers (see OffsetNorms)."""
    offset = norm_offset(spec.family)
    return OffsetNorms(store, norm_names(spec), offset) if offset else store


@dataclass
class TokenizerFiles:
    """What a tokenizer needs, as it will be written next to an exported model."""

    tokenizer_json: str
    config: dict[str, Any] = field(default_factory=dict)  # tokenizer_config.json
    chat_template: str | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        model = json.loads(self.tokenizer_json).get("model", {})
        kind = model.get("type", "?")
        if kind == "BPE":
            kind += " (byte fallback, SentencePiece-style)" if model.get("byte_fallback") else " (byte-level)"
        return kind

    def load(self):
        """A `tokenizers.Tokenizer`."""
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    def write(self, folder: Path) -> list[str]:
        """Write tokenizer.json, tokenizer_config.json, chat_template.jinja and generation_config.json."""
        (folder / "tokenizer.json").write_text(self.tokenizer_json, encoding="utf-8")
        config = {k: v for k, v in self.config.items() if k != "chat_template"}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        names = ["tokenizer.json", "tokenizer_config.json"]
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
            names.append("chat_template.jinja")
        if self.generation_config:
            (folder / "generation_config.json").write_text(json.dumps(self.generation_config, indent=2))
            names.append("generation_config.json")
        return names


@dataclass
class Checkpoint:
    spec: ModelSpec
    tensors: TensorStore
    tokenizer: TokenizerFiles
    config: dict[str, Any]  # an HF config.json dict (translated from metadata for GGUF)
    source: str  # the path or hub id it came from
    format: str  # "hf" or "gguf"
    name: str = ""

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(i.shape) for i in self.tensors.infos().values())

    @property
    def size_on_disk(self) -> int:
        return sum(i.nbytes for i in self.tensors.infos().values())

    @property
    def dtypes(self) -> dict[str, int]:
        """Stored dtype -> number of tensors."""
        counts: dict[str, int] = {}
        for info in self.tensors.infos().values():
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return counts

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = list(self.spec.eos_token_ids)
        extra = self.tokenizer.generation_config.get("eos_token_id")
        for i in extra if isinstance(extra, list) else [extra]:
            if i is not None and i not in ids:
                ids.append(int(i))
        return tuple(ids)


def check_tensors(spec: ModelSpec, store: TensorStore, where: str) -> None:
    """Every tensor the spec needs is present with the right shape."""
    infos = store.infos()
    for name, shape in weight_shapes(spec).items():
        info = infos.get(name)
        if info is None:
            raise SourceError(
                f"{where}: tensor '{name}' is missing for a {spec.family} model with {spec.num_layers} layers; "
                "the checkpoint is incomplete or does not match its config"
            )
        if tuple(info.shape) != shape:
            raise SourceError(
                f"{where}: tensor '{name}' has shape {list(info.shape)} but the config implies {list(shape)}; "
                "the checkpoint does not match its config"
            )
