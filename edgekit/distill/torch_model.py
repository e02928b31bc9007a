"""The decoder in PyTorch, for training: the same function as the numpy reference (edgekit/reference.py)
for every family, over weights kept under their HF names. A weight is either a trainable tensor or
an INT4 tensor whose codes are fixed and whose scales (and float zero points) train, which is what
quantization-aware distillation needs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from ..families import (
    EMBED,
    FINAL_NORM,
    FINAL_ROTATION,
    LayerWeights,
    embedding_scale,
    head_weight,
    layer_weights,
)
from ..quant.tensor import QuantizedTensor
from ..rope import rope_tables
from ..spec import ModelSpec

ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}
NORMS = ("layernorm.weight", "norm.weight")  # input/post-attention, final, q/k norms


def _key(name: str) -> str:
    return name.replace(".", ":")  # module attribute names cannot hold dots


class QuantizedWeight(nn.Module):
    """w = (codes - zero) * scale per group; codes fixed, scales trainable (as a log-gain on the
    quantizer's scales, so one learning rate suits scales of every magnitude), zero points trainable
    only when they are already floats (integer zero points keep ONNX Runtime's int8 kernels).

    With `rounding`, each weight also gets a trainable offset in code units (learned rounding): the
    code used is round(code + offset) clipped to the grid, with the gradient passed straight through
    the rounding, so a weight moves to a neighbouring level once its offset crosses ±0.5. The
    result is still integer codes on the same grid."""

    def __init__(self, qt: QuantizedTensor, rounding: bool = False):
        super().__init__()
        self.bits, self.group_size, self.shape, self.algorithm = qt.bits, qt.group_size, qt.shape, qt.algorithm
        self.symmetric = qt.zeros is None
        n, _ = qt.shape
        self.register_buffer("codes", torch.from_numpy(qt.codes.reshape(n, qt.n_groups, qt.group_size).copy()))
        self.register_buffer("base_scales", torch.from_numpy(qt.scales.astype(np.float32).copy()))
        self.log_gain = nn.Parameter(torch.zeros_like(self.base_scales))
        zeros = torch.from_numpy(qt.zero_points().astype(np.float32).copy())
        if qt.integer_zeros:
            self.register_buffer("zeros", zeros)
        else:
            self.zeros = nn.Parameter(zeros)
        self.offsets = nn.Parameter(torch.zeros(self.codes.shape)) if rounding else None

    @property
    def scales(self) -> torch.Tensor:
        return self.base_scales * self.log_gain.exp()

    def levels(self) -> torch.Tensor:
        """The codes in use, as floats (with learned rounding: a straight-through estimate)."""
        codes = self.codes.float()
        if self.offsets is None:
            return codes
        soft = codes + self.offsets
        hard = soft.detach().round().clamp(0, 2**self.bits - 1)
        return soft + (hard - soft).detach()

    def forward(self) -> torch.Tensor:
        n, k = self.shape
        if self.offsets is None and not isinstance(self.zeros, nn.Parameter):  # fixed: computed once
            if getattr(self, "_centered", None) is None:
                self._centered = self.codes.float() - self.zeros[:, :, None]
            centered = self._centered
        else:
            centered = self.levels() - self.zeros[:, :, None]
        w = centered * self.scales[:, :, None]
        return w.reshape(n, -1)[:, :k]

    def to_quantized(self) -> QuantizedTensor:
        from ..quant.tensor import fp16

        n = self.shape[0]
        codes = self.levels().detach().numpy().astype(self.codes.numpy().dtype)
        # float16 values like HQQ's, as artifacts store them (integer zero points are unchanged)
        zeros = None if self.symmetric else fp16(self.zeros.detach().numpy())
        return QuantizedTensor(
            codes.reshape(n, -1).copy(),
            fp16(self.scales.detach().numpy()),
            zeros,
            self.bits,
            self.group_size,
            self.shape,
            self.algorithm,
        )


class Weights(nn.Module):
    """Every tensor of a model by HF name: float parameters, and quantized weights."""

    def __init__(
        self,
        dense: Mapping[str, np.ndarray],
        quantized: Mapping[str, QuantizedTensor] | None = None,
        trainable: bool = True,
        rounding: bool = False,
    ):
        super().__init__()
        self.dense = nn.ParameterDict(
            {
                _key(name): nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float32)), requires_grad=trainable)
                for name, a in dense.items()
            }
        )
        self.quantized = nn.ModuleDict(
            {_key(name): QuantizedWeight(qt, rounding) for name, qt in (quantized or {}).items()}
        )

    def __contains__(self, name: str) -> bool:
        return _key(name) in self.dense or _key(name) in self.quantized

    def __getitem__(self, name: str) -> torch.Tensor:
        key = _key(name)
        return self.dense[key] if key in self.dense else self.quantized[key]()

    def names(self) -> list[str]:
        return [k.replace(":", ".") for k in [*self.dense.keys(), *self.quantized.keys()]]

    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k.replace(":", "."): p.detach().numpy().copy() for k, p in self.dense.items()}


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    half = rotary_dim // 2
    x1, x2, rest = x[..., :half], x[..., half:rotary_dim], x[..., rotary_dim:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class Decoder(nn.Module):
    """logits [B, T, vocab] for token ids [B, T] (no KV cache: training and evaluation)."""

    def __init__(self, spec: ModelSpec, weights: Weights, max_length: int = 2048):
        super().__init__()
        self.spec, self.weights = spec, weights
        self.act = ACTIVATIONS[spec.hidden_act]
        self.embed_scale = float(np.float32(embedding_scale(spec)))
        cos, sin = rope_tables(spec, max_length)
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)

    def _linear(self, x: torch.Tensor, weights: tuple[str, ...] | str) -> torch.Tensor:
        """x through one weight, or through several stacked by output rows (a split projection)."""
        w, names = self.weights, (weights,) if isinstance(weights, str) else weights
        if len(names) > 1:
            return torch.cat([self._linear(x, n) for n in names], dim=-1)
        bias = names[0].removesuffix(".weight") + ".bias"
        return F.linear(x, w[names[0]], w[bias] if bias in w else None)

    def _mlp(self, x: torch.Tensor, lw: LayerWeights) -> torch.Tensor:
        gate, up = self._linear(x, lw.gate_up).chunk(2, dim=-1)
        return self._linear(self.act(gate) * up, lw.down)

    def causal_mask(self, t: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(t, device=device)
        allowed = positions[:, None] >= positions[None, :]
        if self.spec.sliding_window:
            allowed &= positions[:, None] - positions[None, :] < self.spec.sliding_window
        return torch.zeros(t, t, device=device).masked_fill(~allowed, float("-inf"))

    def layer(self, n: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s, w, lw = self.spec, self.weights, layer_weights(self.spec, n)
        b, t, _ = h.shape
        x = rms_norm(h, w[lw.input_norm], s.rms_norm_eps)
        q, k, v = self._linear(x, lw.qkv).split([s.q_size, s.kv_size, s.kv_size], dim=-1)
        q = q.view(b, t, s.num_heads, s.head_dim).transpose(1, 2)
        k = k.view(b, t, s.num_kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(b, t, s.num_kv_heads, s.head_dim).transpose(1, 2)
        if lw.q_norm and lw.k_norm:
            q = rms_norm(q, w[lw.q_norm], s.rms_norm_eps)
            k = rms_norm(k, w[lw.k_norm], s.rms_norm_eps)
        cos, sin = self.cos[:t], self.sin[:t]
        q, k = rotate(q, cos, sin, s.rotary_dim), rotate(k, cos, sin, s.rotary_dim)
        group = s.num_heads // s.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        h = h + self._linear(attn.transpose(1, 2).reshape(b, t, s.q_size), lw.o)
        x = rms_norm(h, w[lw.post_norm], s.rms_norm_eps)
        return h + self._mlp(x, lw)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s, w = self.spec, self.weights
        embed = w[EMBED]
        h = F.embedding(ids, embed)
        if self.embed_scale != 1:
            h = h * self.embed_scale
        mask = self.causal_mask(ids.shape[1], ids.device)
        for n in range(s.num_layers):
            h = self.layer(n, h, mask)
        x = rms_norm(h, w[FINAL_NORM], s.rms_norm_eps)
        if FINAL_ROTATION in w:  # a rotated stream's final projection (quant/rotate.py)
            x = F.linear(x, w[FINAL_ROTATION])
        head = embed if s.tie_word_embeddings else w[head_weight(s)]
        return F.linear(x, head)


def trainable_norms(weights: Weights) -> list[nn.Parameter]:
    """The norm weights (what quantization-aware distillation trains besides scales)."""
    return [p for k, p in weights.dense.items() if k.replace(":", ".").endswith(NORMS)]
