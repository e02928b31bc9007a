"""GGUF files (llama.cpp's format): metadata -> HF config -> ModelSpec, tensors -> HF names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError, UnsupportedArchitectureError, require
from ..families import FAMILIES, GGUF_ARCHITECTURES, layer_weights, module
from ..spec import ModelSpec, spec_from_config, weight_shapes
from .checkpoint import Checkpoint, TensorInfo, TensorStore, check_tensors
from .gguf_tokenizer import tokenizer_from_gguf

GGUF_MAGIC = b"GGUF"


def gguf_tensor_names(spec: ModelSpec) -> dict[str, str]:
    """Canonical HF name -> llama.cpp's tensor name, for every tensor of the spec, from the gguf
    package's own table of its architecture (phi3's fused gate_up_proj is its ffn_up there)."""
    import gguf

    arch = FAMILIES[spec.family].gguf_arch
    model_arch = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    table = gguf.get_tensor_name_map(model_arch, spec.num_layers)
    names: dict[str, str] = {}
    for name in weight_shapes(spec):
        mapped = table.get_name(module(name))
        if mapped is None:
            raise UnsupportedArchitectureError(
                f"llama.cpp's '{arch}' architecture has no tensor for {name}; this {spec.family} model cannot be GGUF"
            )
        names[name] = f"{mapped}.{name.rpartition('.')[2]}"
    return names


def permuted_heads(spec: ModelSpec) -> dict[str, int]:
    """Module -> the head count llama.cpp interleaved its rows by (its "llama" q/k, biases too)."""
    if not FAMILIES[spec.family].gguf_permuted_qk or spec.fused_qkv:
        return {}
    heads: dict[str, int] = {}
    for n in range(spec.num_layers):
        q, k, _ = layer_weights(spec, n).qkv
        heads[module(q)], heads[module(k)] = spec.num_heads, spec.num_kv_heads
    return heads


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
    def __init__(self, reader: Any, spec: ModelSpec):
        self._reader = reader
        self._tensors: dict[str, Any] = {}
        self._infos: dict[str, TensorInfo] = {}
        self._permute = permuted_heads(spec)
        hf_names = {g: h for h, g in gguf_tensor_names(spec).items()}
        for t in reader.tensors:
            name = hf_names.get(t.name)
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
        return self._permute.get(module(name))

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
    from gguf import MODEL_TENSOR, TENSOR_NAMES, Keys

    arch = _field(reader, Keys.General.ARCHITECTURE)
    family = GGUF_ARCHITECTURES.get(arch)
    if family is None:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(GGUF_ARCHITECTURES))}"
        )

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, key.format(arch=arch), default)

    heads = meta(Keys.Attention.HEAD_COUNT)
    kv_heads = meta(Keys.Attention.HEAD_COUNT_KV, heads)
    if isinstance(heads, list) or isinstance(kv_heads, list):
        raise UnsupportedArchitectureError(f"{path}: per-layer head counts are not supported")
    hidden = meta(Keys.LLM.EMBEDDING_LENGTH)
    head_dim = meta(Keys.Attention.KEY_LENGTH) or (hidden // heads if hidden and heads else None)
    tensor_names = {t.name for t in reader.tensors}
    tokens = _field(reader, Keys.Tokenizer.LIST) or []
    embed = next((t for t in reader.tensors if t.name == TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight"), None)
    vocab = meta(Keys.LLM.VOCAB_SIZE) or (int(embed.shape[1]) if embed is not None else len(tokens))
    config: dict[str, Any] = {
        "model_type": family.model_type,
        "architectures": [family.architecture],
        "hidden_size": hidden,
        "intermediate_size": meta(Keys.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": meta(Keys.LLM.BLOCK_COUNT),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta(Keys.Attention.LAYERNORM_RMS_EPS, 1e-6),
        "rope_theta": meta(Keys.Rope.FREQ_BASE, 10000.0),
        "max_position_embeddings": meta(Keys.LLM.CONTEXT_LENGTH, 2048),
        "vocab_size": vocab,
        "tie_word_embeddings": TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + ".weight" not in tensor_names,
        "attention_bias": family.attention_bias_on_o
        and TENSOR_NAMES[MODEL_TENSOR.ATTN_Q].format(bid=0) + ".bias" in tensor_names,
        "hidden_act": family.default_activation,
        "bos_token_id": _field(reader, Keys.Tokenizer.BOS_ID),
        "eos_token_id": _field(reader, Keys.Tokenizer.EOS_ID),
        "pad_token_id": _field(reader, Keys.Tokenizer.PAD_ID),
    }
    rotary = meta(Keys.Rope.DIMENSION_COUNT)
    if rotary and head_dim and rotary != head_dim:
        config["partial_rotary_factor"] = rotary / head_dim
    scaling = meta(Keys.Rope.SCALING_TYPE)
    if scaling and scaling != "none":
        config["rope_scaling"] = {
            "rope_type": scaling,
            "factor": meta(Keys.Rope.SCALING_FACTOR, 1.0),
            "original_max_position_embeddings": meta(Keys.Rope.SCALING_ORIG_CTX_LEN),
        }
    if meta(Keys.Attention.SLIDING_WINDOW):
        config["sliding_window"] = meta(Keys.Attention.SLIDING_WINDOW)
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
    rope_freqs_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
    rope_freqs = next((t for t in reader.tensors if t.name == rope_freqs_name), None)
    spec = spec_from_config(config, str(path))
    if rope_freqs is not None:
        from dataclasses import replace

        factors = tuple(float(v) for v in np.asarray(rope_freqs.data, dtype=np.float32))
        spec = replace(spec, rope=replace(spec.rope, freq_factors=factors))
    store = GGUFStore(reader, spec)
    check_tensors(spec, store, str(path))
    tokenizer = tokenizer_from_gguf(reader, path, spec)
    name = _field(reader, gguf.Keys.General.NAME) or path.stem
    return Checkpoint(spec, store, tokenizer, config, str(path), "gguf", name=name)
