"""The decoder as one ONNX graph of ONNX Runtime's fused operators (cpu and cuda flavors).

Per layer: (Skip)SimplifiedLayerNormalization -> MatMulNBits (fused q/k/v) -> GroupQueryAttention
(rotary inside, KV cache in one past/present buffer) -> MatMulNBits (o) -> SkipSimplified... ->
MatMulNBits (fused gate/up) -> SiLU * up -> MatMulNBits (down). The embedding is gathered from the
same quantized blocks the (tied) lm_head multiplies with. Built straight from the quantized
tensors: no torch, no tracing. Node names follow `/model/layers.{n}/{block}/{op}`.

Inputs follow onnxruntime-genai's decoder convention (input_ids, attention_mask,
past_key_values.{n}.key/value; outputs logits, present.{n}.key/value) so its runtime loads the
same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..quant.packing import MatMulNBitsWeights, to_matmulnbits
from ..quant.pipeline import QuantizedModel
from ..quant.tensor import QuantizedTensor, concat_rows
from ..rope import rope_tables
from .onnx_graph import MS_DOMAIN, Graph

FLAVORS = ("cpu", "cuda")


@dataclass(frozen=True)
class OnnxOptions:
    flavor: str = "cpu"  # cpu: float32 activations; cuda: float16
    max_context: int = 4096
    accuracy_level: int = 4  # MatMulNBits compute: 0/1 = float32, 4 = int8 activations (CPU)
    all_logits: bool = False  # logits for every position (evaluation) instead of the last one


class DecoderBuilder:
    """One decoder graph; `data`/`written` as for Graph (weights already in the file are not packed
    again)."""

    def __init__(self, qm: QuantizedModel, options: OnnxOptions, data: Path | None = None, written: dict | None = None):
        from onnx import TensorProto

        self.qm, self.spec, self.opt = qm, qm.spec, options
        self.float = np.float16 if options.flavor == "cuda" else np.float32
        self.elem = TensorProto.FLOAT16 if options.flavor == "cuda" else TensorProto.FLOAT
        self.g = Graph("edgekit_decoder", data, written)
        self._packed: dict[str, str] = {}

    def dense(self, name: str) -> str:
        return self.g.const(name, self.qm.dense[name].astype(self.float))

    def matmul(self, x: str, weight: str, qt: QuantizedTensor, scope: str, bias: str | None = None) -> str:
        self.matmul_prepare(weight, qt)
        inputs = self._packed[weight].split(",")
        if bias is not None:
            inputs = (inputs + [""] * 4)[:3] + ["", bias]  # zero_points, g_idx, bias
        n, k = qt.shape
        (y,) = self.g.op(
            "MatMulNBits",
            [x, *inputs],
            scope,
            domain=MS_DOMAIN,
            K=k,
            N=n,
            bits=qt.bits,
            block_size=qt.group_size,
            accuracy_level=self.opt.accuracy_level,
        )
        return y

    def embedding(self, ids: str) -> str:
        """Gather rows of the quantized embedding's blocks and dequantize them in the graph."""
        qt = self.qm.quantized["model.embed_tokens.weight"]
        scope = "/model/embed_tokens"
        if self.spec.tie_word_embeddings:  # share the lm_head's blocks and scales
            self.matmul_prepare("model.embed_tokens.weight", qt)
            qweight, flat_scales = self._packed["model.embed_tokens.weight"].split(",")[:2]
        else:
            packed = to_matmulnbits(qt, np.float16)
            qweight = self.g.const("model.embed_tokens.weight.qweight", packed.B)
            flat_scales = self.stored_half("model.embed_tokens.weight.scales", packed.scales)
            del packed
        (blocks,) = self.g.op("Gather", [qweight, ids], scope, axis=0)  # [1, S, G, blob]
        if qt.bits == 4:
            (low,) = self.g.op(
                "BitwiseAnd", [blocks, self.g.const("const/u8_15", np.array(15, np.uint8))], scope + "/low"
            )
            (high,) = self.g.op(
                "BitShift",
                [blocks, self.g.const("const/u8_4", np.array(4, np.uint8))],
                scope + "/high",
                direction="RIGHT",
            )
            axis = self.g.const("const/axes_last", np.array([-1], np.int64))
            (low,) = self.g.op("Unsqueeze", [low, axis], scope + "/low_unsqueeze")
            (high,) = self.g.op("Unsqueeze", [high, axis], scope + "/high_unsqueeze")
            (blocks,) = self.g.op("Concat", [low, high], scope + "/interleave", axis=-1)  # [1,S,G,blob,2]
        shape = self.g.const("const/embed_block_shape", np.array([1, -1, qt.n_groups, qt.group_size], np.int64))
        (codes,) = self.g.op("Reshape", [blocks, shape], scope + "/codes")
        (codes,) = self.g.op("Cast", [codes], scope + "/cast", to=self.elem)
        # the Reshape is folded once at load; the file keeps one copy of the scales
        shape3 = self.g.const("const/embed_scales_shape", np.array([qt.shape[0], qt.n_groups, 1], np.int64))
        (scales,) = self.g.op("Reshape", [flat_scales, shape3], scope + "/scales_reshape")
        (s,) = self.g.op("Gather", [scales, ids], scope + "/scales", axis=0)  # [1, S, G, 1]
        zeros = qt.zero_points().astype(self.float)
        if qt.zeros is None:
            z = self.g.const("model.embed_tokens.weight.zero", np.array(zeros.flat[0], self.float))
        else:
            (z,) = self.g.op(
                "Gather",
                [self.g.const("model.embed_tokens.weight.zeros2d", zeros[:, :, None]), ids],
                scope + "/zeros",
                axis=0,
            )
        (centered,) = self.g.op("Sub", [codes, z], scope + "/center")
        (values,) = self.g.op("Mul", [centered, s], scope + "/scale")
        flat = self.g.const("const/embed_flat_shape", np.array([1, -1, qt.n_groups * qt.group_size], np.int64))
        (values,) = self.g.op("Reshape", [values, flat], scope + "/flatten")
        if qt.codes.shape[1] != qt.shape[1]:  # padded last block
            starts, ends = np.array([0], np.int64), np.array([qt.shape[1]], np.int64)
            (values,) = self.g.op(
                "Slice",
                [
                    values,
                    self.g.const("const/embed_pad_start", starts),
                    self.g.const("const/embed_pad_end", ends),
                    self.g.const("const/axes_last", np.array([-1], np.int64)),
                ],
                scope + "/unpad",
            )
        return values

    def matmul_prepare(self, weight: str, qt: QuantizedTensor) -> None:
        if weight in self._packed:
            return
        packed: list[MatMulNBitsWeights] = []

        def pack() -> MatMulNBitsWeights:  # only when some of its arrays are not in the data file yet
            if not packed:
                packed.append(to_matmulnbits(qt, np.float16))
            return packed[0]

        names = [self.g.const(weight + ".qweight", lambda: pack().B), self.stored_half(weight + ".scales", pack)]
        if qt.zeros is not None and qt.integer_zeros:
            names.append(self.g.const(weight + ".qzeros", lambda: pack().zero_points))
        elif qt.zeros is not None:  # HQQ's float zero points
            names.append(self.stored_half(weight + ".qzeros", lambda: pack().zero_points, "qzeros"))
        self._packed[weight] = ",".join(names)

    def stored_half(self, name: str, source, field: str = "scales") -> str:
        """Float16 in the file; float32 flavors cast it once at load (ONNX Runtime folds the Cast),
        so scales cost 2 bytes on disk whatever the activation type. `source` is an array or a
        function returning one, or returning packed weights whose `field` it is."""

        def values() -> np.ndarray:
            got = source() if callable(source) else source
            return (got if isinstance(got, np.ndarray) else getattr(got, field)).astype(np.float16)

        stored = self.g.const(name, values)
        if self.float is np.float16:
            return stored
        (cast,) = self.g.op("Cast", [stored], "/model/constants/" + name, to=self.elem)
        return cast

    def projection(self, x: str, names: list[str], scope: str, split: bool = True) -> list[str]:
        """Outputs of the projections `names` (weights) applied to x: fused into one MatMulNBits when
        they were quantized alike (the outputs then come back split, or as one with split=False)."""
        q = self.qm.quantized
        biases = [n.removesuffix(".weight") + ".bias" for n in names]
        has_bias = [b in self.qm.dense for b in biases]
        fused = concat_rows([q[n] for n in names]) if len(names) > 1 else q[names[0]]
        if fused is not None:
            key = names[0] if len(names) == 1 else scope + "/fused.weight"
            bias = None
            if any(has_bias):
                parts = [
                    self.qm.dense[b] if h else np.zeros(q[n].shape[0], np.float32)
                    for n, b, h in zip(names, biases, has_bias, strict=True)
                ]
                bias = self.g.const(key.removesuffix(".weight") + ".bias", np.concatenate(parts).astype(self.float))
            y = self.matmul(x, key, fused, scope + "/MatMul", bias)
            if len(names) == 1 or not split:
                return [y]
            split = self.g.const(scope + "/split_sizes", np.array([q[n].shape[0] for n in names], np.int64))
            return self.g.op("Split", [y, split], scope, outputs=len(names), axis=-1)
        outs = []
        for n, b, h in zip(names, biases, has_bias, strict=True):
            part = n.split(".")[-2]
            outs.append(self.matmul(x, n, q[n], f"{scope}/{part}/MatMul", self.dense(b) if h else None))
        return outs

    def norm(self, x: str, weight: str, scope: str, skip: str | None = None) -> tuple[str, str]:
        """(normed, residual): SkipSimplifiedLayerNormalization adds the residual in the same op."""
        eps = float(self.spec.rms_norm_eps)
        if skip is None:
            (y,) = self.g.op("SimplifiedLayerNormalization", [x, self.dense(weight)], scope, axis=-1, epsilon=eps)
            return y, x
        y, _, _, residual = self.g.op(
            "SkipSimplifiedLayerNormalization",
            [x, skip, self.dense(weight)],
            scope,
            outputs=4,
            domain=MS_DOMAIN,
            epsilon=eps,
        )
        return y, residual

    def head_norm(self, x: str, weight: str, heads: int, scope: str) -> str:
        """qwen3's RMS norm over each head of q or k."""
        shape = self.g.const(scope + "/heads_shape", np.array([1, -1, heads, self.spec.head_dim], np.int64))
        (y,) = self.g.op("Reshape", [x, shape], scope + "/split_heads")
        (y,) = self.g.op(
            "SimplifiedLayerNormalization",
            [y, self.dense(weight)],
            scope,
            axis=-1,
            epsilon=float(self.spec.rms_norm_eps),
        )
        flat = self.g.const(scope + "/flat_shape", np.array([1, -1, heads * self.spec.head_dim], np.int64))
        (y,) = self.g.op("Reshape", [y, flat], scope + "/merge_heads")
        return y

    def build(self) -> Graph:
        from onnx import TensorProto

        s, g, opt = self.spec, self.g, self.opt
        ids = g.input("input_ids", TensorProto.INT64, ["batch", "sequence"])
        mask = g.input("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])
        (seqlen,) = g.op(
            "ReduceSum",
            [mask, g.const("const/axes_1", np.array([1], np.int64))],
            "/model/attn_mask_reformat/seqlens",
            keepdims=0,
        )
        (seqlen,) = g.op(
            "Sub", [seqlen, g.const("const/one_i64", np.array(1, np.int64))], "/model/attn_mask_reformat/minus_one"
        )
        (seqlens_k,) = g.op("Cast", [seqlen], "/model/attn_mask_reformat/seqlens_k", to=TensorProto.INT32)
        (shape,) = g.op("Shape", [mask], "/model/attn_mask_reformat/shape")
        (total,) = g.op(
            "Gather",
            [shape, g.const("const/index_1", np.array(1, np.int64))],
            "/model/attn_mask_reformat/total",
            axis=0,
        )
        (total,) = g.op("Cast", [total], "/model/attn_mask_reformat/total_sequence_length", to=TensorProto.INT32)
        cos, sin = rope_tables(s, opt.max_context)
        cos_cache = g.const("cos_cache", cos.astype(self.float))
        sin_cache = g.const("sin_cache", sin.astype(self.float))
        kv_shape = ["batch", s.num_kv_heads, "max_sequence", s.head_dim]

        x = self.embedding(ids)
        residual = None
        delta = x
        for n in range(s.num_layers):
            p, scope = f"model.layers.{n}.", f"/model/layers.{n}"
            normed, residual = self.norm(delta, p + "input_layernorm.weight", scope + "/input_layernorm", residual)
            attn_names = (
                [p + "self_attn.qkv_proj.weight"] if s.fused_qkv else [p + f"self_attn.{x}_proj.weight" for x in "qkv"]
            )
            # packed q/k/v go straight into the attention; split only for qwen3's head norms
            outs = self.projection(normed, attn_names, scope + "/attn/qkv_proj", split=False)
            if s.qk_norm or len(outs) == 3:
                if len(outs) == 1:
                    sizes = g.const(scope + "/attn/qkv_split", np.array([s.q_size, s.kv_size, s.kv_size], np.int64))
                    outs = g.op("Split", [outs[0], sizes], scope + "/attn/qkv_split", outputs=3, axis=-1)
                q, k, v = outs
                if s.qk_norm:
                    q = self.head_norm(q, p + "self_attn.q_norm.weight", s.num_heads, scope + "/attn/q_norm")
                    k = self.head_norm(k, p + "self_attn.k_norm.weight", s.num_kv_heads, scope + "/attn/k_norm")
            else:
                q, k, v = outs[0], "", ""
            past_k = g.input(f"past_key_values.{n}.key", self.elem, kv_shape)
            past_v = g.input(f"past_key_values.{n}.value", self.elem, kv_shape)
            present_k = g.output(f"present.{n}.key", self.elem, kv_shape)
            present_v = g.output(f"present.{n}.value", self.elem, kv_shape)
            attrs = {"num_heads": s.num_heads, "kv_num_heads": s.num_kv_heads, "do_rotary": 1, "rotary_interleaved": 0}
            if s.sliding_window:
                attrs["local_window_size"] = int(s.sliding_window)
            attn = g.op(
                "GroupQueryAttention",
                [q, k, v, past_k, past_v, seqlens_k, total, cos_cache, sin_cache],
                scope + "/attn",
                outputs=[scope + "/attn/output", present_k, present_v],
                domain=MS_DOMAIN,
                **attrs,
            )[0]
            (delta,) = self.projection(attn, [p + "self_attn.o_proj.weight"], scope + "/attn/o_proj")
            normed, residual = self.norm(
                delta, p + "post_attention_layernorm.weight", scope + "/post_attention_layernorm", residual
            )
            mlp_names = (
                [p + "mlp.gate_up_proj.weight"]
                if s.fused_gate_up
                else [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
            )
            outs = self.projection(normed, mlp_names, scope + "/mlp/gate_up_proj")
            if len(outs) == 1:
                outs = g.op("Split", [outs[0]], scope + "/mlp/gate_up_split", outputs=2, axis=-1, num_outputs=2)
            gate, up = outs
            (sig,) = g.op("Sigmoid", [gate], scope + "/mlp/act/Sigmoid")
            (act,) = g.op("Mul", [gate, sig], scope + "/mlp/act/Mul")
            (prod,) = g.op("Mul", [act, up], scope + "/mlp/Mul")
            (delta,) = self.projection(prod, [p + "mlp.down_proj.weight"], scope + "/mlp/down_proj")
        normed, _ = self.norm(delta, "model.norm.weight", "/model/norm", residual)
        if not opt.all_logits:
            (normed,) = g.op(
                "Slice",
                [
                    normed,
                    g.const("const/last_start", np.array([-1], np.int64)),
                    g.const("const/last_end", np.array([np.iinfo(np.int64).max], np.int64)),
                    g.const("const/axes_1", np.array([1], np.int64)),
                ],
                "/model/last_position",
            )
        head = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
        logits = self.matmul(normed, head, self.qm.quantized[head], "/lm_head/MatMul")
        if self.float is np.float16:
            (logits,) = g.op("Cast", [logits], "/lm_head/Cast", to=TensorProto.FLOAT)
        (out,) = g.op("Identity", [logits], "/lm_head/output", outputs=["logits"])
        g.output(out, TensorProto.FLOAT, ["batch", "sequence" if opt.all_logits else 1, s.vocab_size])
        return g
