"""MLX backend: mlx-lm layout folders (edgekit's MLX artifacts and mlx-lm's own conversions) on
Metal, or on MLX's CPU backend elsewhere.

Activations are float32 on the CPU (MLX's CPU kernels are fastest there and the numpy reference
is matched within 1e-3) and float16 on the GPU. A token costs one graph evaluation: the layers
are built lazily and evaluated once, cache updates included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError, require
from ..spec import ModelSpec
from .base import check_room, prefill_in_chunks

INDEX_FILE = "model.safetensors.index.json"
DEFAULT_PREFILL_CHUNK = 512


def is_mlx_folder(folder: Path) -> bool:
    """An mlx-lm model folder: a config.json with a `quantization` key beside safetensors files."""
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "quantization" in data and any(folder.glob("*.safetensors"))


def weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in dict.fromkeys(weight_map.values())]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise EdgekitError(f"{folder}: no .safetensors files; this is not an MLX model folder")
    return files


def module_settings(quantization: dict[str, Any], module: str, where: Path) -> tuple[int, int]:
    """(bits, group size) of a quantized module: its own entry in mlx-lm's `quantization` key, else
    the key's defaults (mlx-lm's group size 64 when none is written)."""
    entry = quantization.get(module)
    entry = entry if isinstance(entry, dict) else {}
    if "bits" not in quantization and "bits" not in entry:
        raise EdgekitError(f"{where}: module {module} is quantized but the config gives no quantization bits")
    return entry.get("bits", quantization.get("bits")), entry.get("group_size", quantization.get("group_size", 64))


def _mx():
    return require("mlx.core", "mlx")


class MlxRuntime:
    def __init__(
        self,
        folder: str | Path,
        max_context: int | None = None,
        *,
        dtype: str | None = None,
        prefill_chunk: int | None = None,
        threads: int | None = None,
        kv_bits: int = 0,
    ):
        """threads: on MLX's CPU backend, the number of CPU streams each big matmul is split over
        (default: one per core); unused on the GPU. kv_bits: 8 keeps the KV cache in int8 with
        per-group scales (mlx_cache), 0 in the compute dtype."""
        mx = _mx()
        from functools import partial

        from .mlx_cache import KVCache, kv_codec
        from .mlx_decoder import Model

        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EdgekitError(f"{config_path}: cannot read the MLX model config ({exc})") from None
        self.spec = ModelSpec.from_config(self.config, str(config_path))
        self.quantization = self.config.get("quantization") or self.config.get("quantization_config") or {}
        self.max_context = min(max_context or self.spec.max_position_embeddings, self.spec.max_position_embeddings)
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        on_gpu = mx.default_device() == mx.gpu
        self.dtype = getattr(mx, dtype or ("float16" if on_gpu else "float32"))
        self.kv_bits = kv_bits
        self.codec = kv_codec(kv_bits, self.dtype, self.spec.head_dim)
        weights: dict[str, Any] = {}
        for path in weight_files(self.folder):
            try:
                weights.update(mx.load(str(path)))
            except (RuntimeError, ValueError, OSError) as exc:
                raise EdgekitError(f"{path}: MLX cannot read it ({exc}); the file is truncated or corrupt") from None
        weights = {k: v if v.dtype == mx.uint32 else v.astype(self.dtype) for k, v in weights.items()}
        parts = 1 if on_gpu else threads or os.cpu_count() or 1
        streams = tuple(mx.new_stream(mx.cpu) for _ in range(parts)) if parts > 1 else ()
        try:
            self.model = Model(self.spec, weights, self._settings, streams)
        except KeyError as exc:
            raise EdgekitError(
                f"{self.folder}: tensor {exc} is missing for a {self.spec.family} model with "
                f"{self.spec.num_layers} layers; the folder is incomplete or does not match its config"
            ) from None
        mx.eval(list(weights.values()))
        s = self.spec
        self.caches = [KVCache(self.max_context, s.num_kv_heads, s.head_dim, self.codec) for _ in range(s.num_layers)]
        self._step = mx.compile(partial(self.model.step, self.codec))
        self.why_no_verify = None

    def _settings(self, module: str) -> tuple[int, int]:
        return module_settings(self.quantization, module, self.folder / "config.json")

    @property
    def length(self) -> int:
        return self.caches[0].offset

    @property
    def kv_nbytes(self) -> int:
        """Bytes the KV cache's buffers take now (they grow with the sequence)."""
        return sum(cache.nbytes for cache in self.caches)

    def _run(self, ids: Sequence[int], last_only: bool = True) -> np.ndarray:
        mx = _mx()
        logits = self.model(mx.array(np.asarray(ids, dtype=np.int32)), self.caches, last_only)
        mx.eval(logits)
        return np.array(logits.astype(mx.float32))

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return prefill_in_chunks(self, ids, self.prefill_chunk, self._run)

    def decode(self, token: int) -> np.ndarray:
        """The compiled step over the whole cache buffers, grown first when full."""
        mx = _mx()
        offset = self.length
        check_room(offset, 1, self.max_context)
        for cache in self.caches:
            cache.reserve(offset + 1)
        logits, keys, values = self._step(
            mx.array([token], dtype=mx.int32),
            mx.array(offset, dtype=mx.int32),
            [c.keys for c in self.caches],
            [c.values for c in self.caches],
        )
        mx.eval(logits, keys, values)
        for cache, k, v in zip(self.caches, keys, values, strict=True):
            cache.keys, cache.values, cache.offset = k, v, offset + 1
        return np.array(logits.astype(mx.float32))[-1]

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        check_room(self.length, len(ids), self.max_context)
        return self._run(ids, last_only=False)

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        check_room(0, len(ids), self.max_context)
        return self._run(ids, last_only=False)

    def reset(self) -> None:
        self.trim(0)

    def trim(self, length: int) -> None:
        for cache in self.caches:
            cache.offset = min(cache.offset, length)
