"""GGUF files (llama.cpp's format): metadata -> HF config -> ModelSpec, tensors -> HF names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError, UnsupportedArchitectureError, require
from ..spec import FAMILIES, spec_from_config
from .checkpoint import Checkpoint, TensorInfo, TensorStore, check_tensors
from .gguf_tokenizer import tokenizer_from_gguf

GGUF_MAGIC = b"GGUF"

# GGUF general.architecture -> HF model_type. Mistral models are written as "llama".
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str, arch: str) -> str | None:
    match = _LAYER_RE.match(gguf_name)
    if match:
        layer, part, kind = match.groups()
        if part == "ffn_up" and arch == "phi3":  # phi3 keeps gate and up fused in ffn_up
            return f"model.layers.{layer}.mlp.gate_up_proj.{kind}"
        mapped = _LAYER_NAMES.get(part)
        return f"model.layers.{layer}.{mapped}.{kind}" if mapped else None
    stem, _, kind = gguf_name.rpartition(".")
    mapped = _GLOBAL_NAMES.get(stem)
    return f"{mapped}.{kind}" if mapped else None


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of the rotary halves in Llama q/k projection rows."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation (used when writing GGUF files in tests)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


class GGUFStore(TensorStore):
    def __init__(self, reader: Any, arch: str, heads: int, kv_heads: int):
        self._reader = reader
        self._arch = arch
        self._tensors: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] = {}
        # llama.cpp permutes q/k rows only for its "llama" architecture.
        self._permute = {"q_proj": heads, "k_proj": kv_heads} if arch == "llama" else {}
        for t in reader.tensors:
            name = hf_name(t.name, arch)
            if name is None:
                continue
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self._tensors[name] = t
            self._infos[name] = TensorInfo(name, shape, t.tensor_type.name, int(t.n_bytes))

    def infos(self) -> dict[str, TensorInfo]:
        return self._infos

    def _dequantize(self, name: str, data: np.ndarray) -> np.ndarray:
        from gguf.quants import dequantize

        t = self._tensors[name]
        try:
            values = dequantize(data, t.tensor_type)
        except NotImplementedError:
            raise SourceError(
                f"tensor '{t.name}' has GGUF type {t.tensor_type.name}, which the gguf package cannot dequantize"
            ) from None
        return np.asarray(values, dtype=np.float32)

    def get(self, name: str) -> np.ndarray:
        values = self._dequantize(name, self._tensors[name].data).reshape(self._infos[name].shape)
        heads = self._permuted_heads(name)
        return values if heads is None else unpermute_rows(values, heads)

    def _permuted_heads(self, name: str) -> int | None:
        """The head count llama.cpp interleaved this tensor's rows by, or None (rows as stored)."""
        return self._permute.get(name.split(".")[-2])

    # A GGUF matrix's data holds one row per entry (a quantized row's blocks as bytes), so some rows
    # dequantize alone: an embedding lookup or a block of the lm_head without the whole tensor.
    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if self._permuted_heads(name) is not None:
            return super().rows(name, start, stop)
        return self._dequantize(name, self._tensors[name].data[start:stop]).reshape(-1, self._infos[name].shape[-1])

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        if self._permuted_heads(name) is not None:
            return super().take(name, rows)
        rows = np.asarray(rows)
        values = self._dequantize(name, self._tensors[name].data[rows.reshape(-1)])
        return values.reshape(*rows.shape, self._infos[name].shape[-1])


def _config_from_metadata(reader: Any, path: Path) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    model_type = ARCHITECTURES.get(arch)
    if model_type is None:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    heads = meta("attention.head_count")
    kv_heads = meta("attention.head_count_kv", heads)
    if isinstance(heads, list) or isinstance(kv_heads, list):
        raise UnsupportedArchitectureError(f"{path}: per-layer head counts are not supported")
    hidden = meta("embedding_length")
    head_dim = meta("attention.key_length") or (hidden // heads if hidden and heads else None)
    tensor_names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = meta("vocab_size") or (int(embed.shape[1]) if embed is not None else len(tokens))
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [FAMILIES[model_type].architecture],
        "hidden_size": hidden,
        "intermediate_size": meta("feed_forward_length"),
        "num_hidden_layers": meta("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": meta("rope.freq_base", 10000.0),
        "max_position_embeddings": meta("context_length", 2048),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "attention_bias": model_type == "llama" and "blk.0.attn_q.bias" in tensor_names,
        "hidden_act": "silu",
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    rotary = meta("rope.dimension_count")
    if rotary and head_dim and rotary != head_dim:
        config["partial_rotary_factor"] = rotary / head_dim
    scaling = meta("rope.scaling.type")
    if scaling and scaling != "none":
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": meta("rope.scaling.factor", 1.0),
            "original_max_position_embeddings": meta("rope.scaling.original_context_length"),
        }
    if meta("attention.sliding_window"):
        config["sliding_window"] = meta("attention.sliding_window")
    if config["intermediate_size"] is None or hidden is None or heads is None or config["num_hidden_layers"] is None:
        raise SourceError(f"{path}: GGUF metadata lacks the {arch}.* model sizes; the file is incomplete")
    return config


def open_gguf(path: Path) -> Checkpoint:
    gguf = require("gguf", "export")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise SourceError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'); pass a .gguf model file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader fails in many ways on a damaged file
        raise SourceError(
            f"{path}: GGUF file is truncated or corrupt ({type(exc).__name__}: {exc}); re-download it"
        ) from None
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size or t.data.nbytes != int(t.n_bytes):
            raise SourceError(f"{path}: GGUF file is truncated: tensor '{t.name}' runs past the end; re-download it")
    config = _config_from_metadata(reader, path)
    rope_freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    spec = spec_from_config(config, str(path))
    if rope_freqs is not None:
        from dataclasses import replace

        factors = tuple(float(v) for v in np.asarray(rope_freqs.data, dtype=np.float32))
        spec = replace(spec, rope=replace(spec.rope, freq_factors=factors))
    store = GGUFStore(reader, _field(reader, "general.architecture"), spec.num_heads, spec.num_kv_heads)
    check_tensors(spec, store, str(path))
    tokenizer = tokenizer_from_gguf(reader, path, spec)
    name = _field(reader, "general.name") or path.stem
    return Checkpoint(spec, store, tokenizer, config, str(path), "gguf", name=name)
