"""The decoder as one ONNX graph of ONNX Runtime's fused operators (cpu and cuda flavors).

Per layer: (Skip)SimplifiedLayerNormalization -> MatMulNBits (fused q/k/v) -> GroupQueryAttention
(rotary inside, KV cache in one past/present buffer) -> MatMulNBits (o) -> SkipSimplified... ->
MatMulNBits (fused gate/up) -> SiLU (or tanh-approximated GELU) * up -> MatMulNBits (down). The
embedding is gathered from the same quantized blocks the (tied) lm_head multiplies with (and scaled
by sqrt(hidden) for gemma). Built straight from the quantized tensors: no torch, no tracing.
Node names follow `/model/layers.{n}/{block}/{op}`.

Float zero points (HQQ's, or trained by QAD) would send MatMulNBits to ONNX Runtime's slow
unpacked path (its int8 CPU kernels and CUDA's fused GEMV take integer zero points only), so such a
weight is split exactly: W = (q - z) * s = (q - m) * s + (m - z) * s, m = 2**(bits - 1). The first
term is a MatMulNBits without zero points (m is its default); the second is constant over each group
of g inputs, so x @ its transpose = (x summed over each group) @ C, C [groups, N] = ((m - z) * s)^T,
computed in the graph from the stored float16 zero points and scales and folded once at load.

Inputs follow onnxruntime-genai's decoder convention (input_ids, attention_mask,
past_key_values.{n}.key/value; outputs logits, present.{n}.key/value) so its runtime loads the
same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import BATCH_METADATA, LOGITS_TO_KEEP
from ..errors import EdgekitError
from ..families import EMBED, FINAL_NORM, FINAL_ROTATION, bias_of, embedding_scale, head_weight, layer_weights
from ..quant.packing import MatMulNBitsWeights, to_matmulnbits
from ..quant.pipeline import QuantizedModel
from ..quant.tensor import QuantizedTensor, alike_groups, concat_rows
from ..rope import rope_tables
from .onnx_graph import MS_DOMAIN, Graph

FLAVORS = ("cpu", "cuda")


@dataclass(frozen=True)
class OnnxOptions:
    flavor: str = "cpu"  # cpu: float32 activations; cuda: float16
    max_context: int = 4096
    accuracy_level: int = 4  # MatMulNBits compute: 0/1 = float32, 4 = int8 activations (CPU)
    all_logits: bool = False  # logits for every position (evaluation) instead of the last one
    kv_bits: int = 0  # 8: the KV cache in int8, one scale per KV head and channel (kv_scales)
    kv_scales: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None  # per layer, key and value [kv_heads, head_dim]


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
        self._zero_tables: dict[str, str] = {}  # weight with float zero points -> its C [groups, N]
        self._float_zeros: dict[str, str] = {}  # weight -> its float zero points [N * groups], float32
        self._group_sums: dict[tuple[str, int, int], str] = {}  # (input, groups, group size) -> sums

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
        if weight in self._zero_tables:  # float zero points: add x's group sums @ C
            sums = self.group_sums(x, k, qt.n_groups, qt.group_size, scope)
            (term,) = self.g.op("MatMul", [sums, self._zero_tables[weight]], scope + "/zero_point_term")
            (y,) = self.g.op("Add", [y, term], scope + "/zero_point_term")
        return y

    def group_sums(self, x: str, k: int, groups: int, group_size: int, scope: str) -> str:
        """x [batch, sequence, k] summed over each block of `group_size` inputs: [batch, sequence,
        groups] (a last block past k counts zeros). Made once per input and grouping."""
        key = (x, groups, group_size)
        if key not in self._group_sums:
            pad = groups * group_size - k
            if pad:
                pads = self.g.const(f"const/pad_last_{pad}", np.array([0, 0, 0, 0, 0, pad], np.int64))
                (x,) = self.g.op("Pad", [x, pads], scope + "/group_sums")
            shape = self.g.const(f"const/groups_{groups}x{group_size}", np.array([0, 0, groups, group_size], np.int64))
            (blocks,) = self.g.op("Reshape", [x, shape], scope + "/group_sums")
            (sums,) = self.g.op(
                "ReduceSum",
                [blocks, self.g.const("const/axes_last", np.array([-1], np.int64))],
                scope + "/group_sums",
                keepdims=0,
            )
            self._group_sums[key] = sums
        return self._group_sums[key]

    def embedding(self, ids: str) -> str:
        """Gather rows of the quantized embedding's blocks and dequantize them in the graph."""
        qt = self.qm.quantized[EMBED]
        scope = "/model/embed_tokens"
        if self.spec.tie_word_embeddings:  # share the lm_head's blocks and scales
            self.matmul_prepare(EMBED, qt)
            qweight, flat_scales = self._packed[EMBED].split(",")[:2]
        else:
            packed = to_matmulnbits(qt, np.float16)
            qweight = self.g.const(EMBED + ".qweight", packed.B)
            flat_scales = self.stored_half(EMBED + ".scales", packed.scales)
            del packed
        (blocks,) = self.g.op("Gather", [qweight, ids], scope, axis=0)  # [batch, S, G, blob]
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
        shape = self.g.const("const/embed_block_shape", np.array([0, -1, qt.n_groups, qt.group_size], np.int64))
        (codes,) = self.g.op("Reshape", [blocks, shape], scope + "/codes")
        (codes,) = self.g.op("Cast", [codes], scope + "/cast", to=self.elem)
        # the Reshape is folded once at load; the file keeps one copy of the scales
        shape3 = self.g.const("const/embed_scales_shape", np.array([qt.shape[0], qt.n_groups, 1], np.int64))
        (scales,) = self.g.op("Reshape", [flat_scales, shape3], scope + "/scales_reshape")
        (s,) = self.g.op("Gather", [scales, ids], scope + "/scales", axis=0)  # [1, S, G, 1]
        if qt.zeros is None:
            z = self.g.const(EMBED + ".zero", np.array(2 ** (qt.bits - 1), self.float))
        elif qt.integer_zeros:
            zeros = qt.zeros.astype(self.float)[:, :, None]
            (z,) = self.g.op(
                "Gather",
                [self.g.const(EMBED + ".zeros2d", zeros), ids],
                scope + "/zeros",
                axis=0,
            )
        else:  # the float16 zero points the (tied) lm_head's C is made of: one copy in the file
            flat = self.float_zeros(EMBED, qt, self.elem)
            (zeros,) = self.g.op("Reshape", [flat, shape3], scope + "/zeros_reshape")
            (z,) = self.g.op("Gather", [zeros, ids], scope + "/zeros", axis=0)
        (centered,) = self.g.op("Sub", [codes, z], scope + "/center")
        (values,) = self.g.op("Mul", [centered, s], scope + "/scale")
        flat = self.g.const("const/embed_flat_shape", np.array([0, -1, qt.n_groups * qt.group_size], np.int64))
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
        scale = embedding_scale(self.spec)
        if scale != 1:
            factor = self.g.const("const/embed_scale", np.array(scale, np.float32).astype(self.float))
            (values,) = self.g.op("Mul", [values, factor], scope + "/scale_by_sqrt_hidden")
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
        elif qt.zeros is not None:  # float zero points: none on the MatMulNBits, a C table beside it
            self._zero_tables[weight] = self.zero_point_table(weight, qt, names[1])
        self._packed[weight] = ",".join(names)

    def float_zeros(self, weight: str, qt: QuantizedTensor, elem: int) -> str:
        """A weight's float zero points [N * groups] (row-major), stored once as float16 (their
        precision) and cast once at load to `elem` where that is float32."""
        from onnx import TensorProto

        stored = self.g.const(weight + ".qzeros", lambda: qt.zeros.astype(np.float16).reshape(-1))
        if elem == TensorProto.FLOAT16:
            return stored
        if weight not in self._float_zeros:
            (cast,) = self.g.op("Cast", [stored], "/model/constants/" + stored, to=TensorProto.FLOAT)
            self._float_zeros[weight] = cast
        return self._float_zeros[weight]

    def zero_point_table(self, weight: str, qt: QuantizedTensor, scales: str) -> str:
        """C [groups, N] = ((m - z) * s)^T of a weight with float zero points, m = 2**(bits - 1):
        from the stored float16 zero points and scales, in float32 (see quant.packing.zero_point_table, the
        same table for the optimum path, on exactness), rounded
        once to float16 for the cuda flavor. Constant, so ONNX Runtime folds it at load."""
        from onnx import TensorProto

        n, groups = qt.shape[0], qt.n_groups
        scope = "/model/constants/" + weight + ".zero_point_term"
        zeros = self.float_zeros(weight, qt, TensorProto.FLOAT)
        if self.float is np.float16:
            (scales,) = self.g.op("Cast", [scales], scope + "/scales", to=TensorProto.FLOAT)
        mid = self.g.const(f"const/f32_{2 ** (qt.bits - 1)}", np.array(2 ** (qt.bits - 1), np.float32))
        (c,) = self.g.op("Sub", [mid, zeros], scope)
        (c,) = self.g.op("Mul", [c, scales], scope)
        (c,) = self.g.op("Reshape", [c, self.g.const(f"{scope}/shape", np.array([n, groups], np.int64))], scope)
        (c,) = self.g.op("Transpose", [c], scope, perm=[1, 0])
        if self.float is np.float16:
            (c,) = self.g.op("Cast", [c], scope + "/half", to=TensorProto.FLOAT16)
        return c

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

    def projection(self, x: str, names: list[str] | tuple[str, ...], scope: str, split: bool = True) -> list[str]:
        """Outputs of the projections `names` (weights) applied to x, one MatMulNBits per set of them
        quantized alike (alike_groups): all of them fused into one, whose output comes back split or,
        with split=False, whole; else one per set, every output split apart."""
        q = self.qm.quantized
        groups = alike_groups([q[n] for n in names])
        if len(groups) == 1:
            return self.fused_projection(x, list(names), scope, split)
        outs = [""] * len(names)
        for group in groups:
            members = [names[i] for i in group]
            part = "+".join(n.split(".")[-2] for n in members)
            for i, y in zip(group, self.fused_projection(x, members, f"{scope}/{part}", True), strict=True):
                outs[i] = y
        return outs

    def fused_projection(self, x: str, names: list[str], scope: str, split: bool) -> list[str]:
        """One MatMulNBits over the stacked rows of `names`, quantized alike."""
        q = self.qm.quantized
        fused = concat_rows([q[n] for n in names])
        assert fused is not None, names
        key = names[0] if len(names) == 1 else scope + "/fused.weight"
        bias = None
        if any(bias_of(n) in self.qm.dense for n in names):
            parts = [
                self.qm.dense[bias_of(n)] if bias_of(n) in self.qm.dense else np.zeros(q[n].shape[0], np.float32)
                for n in names
            ]
            bias = self.g.const(key.removesuffix(".weight") + ".bias", np.concatenate(parts).astype(self.float))
        y = self.matmul(x, key, fused, scope + "/MatMul", bias)
        if len(names) == 1 or not split:
            return [y]
        sizes = self.g.const(scope + "/split_sizes", np.array([q[n].shape[0] for n in names], np.int64))
        return self.g.op("Split", [y, sizes], scope, outputs=len(names), axis=-1)

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
        shape = self.g.const(scope + "/heads_shape", np.array([0, -1, heads, self.spec.head_dim], np.int64))
        (y,) = self.g.op("Reshape", [x, shape], scope + "/split_heads")
        (y,) = self.g.op(
            "SimplifiedLayerNormalization",
            [y, self.dense(weight)],
            scope,
            axis=-1,
            epsilon=float(self.spec.rms_norm_eps),
        )
        flat = self.g.const(scope + "/flat_shape", np.array([0, -1, heads * self.spec.head_dim], np.int64))
        (y,) = self.g.op("Reshape", [y, flat], scope + "/merge_heads")
        return y

    def activation(self, x: str, scope: str) -> str:
        """The MLP's activation of the gate: SiLU as Sigmoid * x, the tanh GELU as ONNX Runtime's
        FastGelu (CPU and CUDA kernels, float16 included)."""
        if self.spec.hidden_act == "gelu_pytorch_tanh":
            (y,) = self.g.op("FastGelu", [x], scope + "/FastGelu", domain=MS_DOMAIN)
            return y
        if self.spec.hidden_act != "silu":
            raise EdgekitError(
                f"the ONNX decoder has no {self.spec.hidden_act} activation; supported: silu, gelu_pytorch_tanh"
            )
        (sig,) = self.g.op("Sigmoid", [x], scope + "/Sigmoid")
        (y,) = self.g.op("Mul", [x, sig], scope + "/Mul")
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
        kv_elem = TensorProto.INT8 if opt.kv_bits == 8 else self.elem

        x = self.embedding(ids)
        residual = None
        delta = x
        for n in range(s.num_layers):
            lw, scope = layer_weights(s, n), f"/model/layers.{n}"
            normed, residual = self.norm(delta, lw.input_norm, scope + "/input_layernorm", residual)
            # packed q/k/v go straight into the attention; split only for qwen3's head norms
            outs = self.projection(normed, lw.qkv, scope + "/attn/qkv_proj", split=False)
            if s.qk_norm or len(outs) == 3:
                if len(outs) == 1:
                    sizes = g.const(scope + "/attn/qkv_split", np.array([s.q_size, s.kv_size, s.kv_size], np.int64))
                    outs = g.op("Split", [outs[0], sizes], scope + "/attn/qkv_split", outputs=3, axis=-1)
                q, k, v = outs
                if lw.q_norm and lw.k_norm:
                    q = self.head_norm(q, lw.q_norm, s.num_heads, scope + "/attn/q_norm")
                    k = self.head_norm(k, lw.k_norm, s.num_kv_heads, scope + "/attn/k_norm")
            else:
                q, k, v = outs[0], "", ""
            past_k = g.input(f"past_key_values.{n}.key", kv_elem, kv_shape)
            past_v = g.input(f"past_key_values.{n}.value", kv_elem, kv_shape)
            present_k = g.output(f"present.{n}.key", kv_elem, kv_shape)
            present_v = g.output(f"present.{n}.value", kv_elem, kv_shape)
            attrs = {"num_heads": s.num_heads, "kv_num_heads": s.num_kv_heads, "do_rotary": 1, "rotary_interleaved": 0}
            if s.sliding_window:
                attrs["local_window_size"] = int(s.sliding_window)
            scales: list[str] = []
            if opt.kv_bits == 8:
                attrs |= {"k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL", "kv_cache_bit_width": 8}
                shape = (1, s.num_kv_heads, 1, s.head_dim)
                key_scale, value_scale = opt.kv_scales[n]
                scales = [
                    "",  # position_ids
                    "",  # attention_bias
                    "",  # head_sink
                    g.const(scope + "/attn/k_scale", key_scale.reshape(shape).astype(np.float32)),
                    g.const(scope + "/attn/v_scale", value_scale.reshape(shape).astype(np.float32)),
                ]
            attn = g.op(
                "GroupQueryAttention",
                [q, k, v, past_k, past_v, seqlens_k, total, cos_cache, sin_cache, *scales],
                scope + "/attn",
                outputs=[scope + "/attn/output", present_k, present_v],
                domain=MS_DOMAIN,
                **attrs,
            )[0]
            (delta,) = self.projection(attn, [lw.o], scope + "/attn/o_proj")
            normed, residual = self.norm(delta, lw.post_norm, scope + "/post_attention_layernorm", residual)
            outs = self.projection(normed, lw.gate_up, scope + "/mlp/gate_up_proj")
            if len(outs) == 1:
                outs = g.op("Split", [outs[0]], scope + "/mlp/gate_up_split", outputs=2, axis=-1, num_outputs=2)
            gate, up = outs
            (prod,) = g.op("Mul", [self.activation(gate, scope + "/mlp/act"), up], scope + "/mlp/Mul")
            (delta,) = self.projection(prod, [lw.down], scope + "/mlp/down_proj")
        normed, _ = self.norm(delta, FINAL_NORM, "/model/norm", residual)
        if FINAL_ROTATION in self.qm.quantized:
            rotation = self.qm.quantized[FINAL_ROTATION]
            normed = self.matmul(normed, FINAL_ROTATION, rotation, "/model/final_rotation/MatMul")
        if not opt.all_logits:
            # the last `logits_to_keep` positions: 1 to decode and prefill, every position it runs
            # for a speculative verify step
            keep = g.input(LOGITS_TO_KEEP, TensorProto.INT64, [1])
            (start,) = g.op("Neg", [keep], "/model/kept_positions/start")
            (normed,) = g.op(
                "Slice",
                [
                    normed,
                    start,
                    g.const("const/last_end", np.array([np.iinfo(np.int64).max], np.int64)),
                    g.const("const/axes_1", np.array([1], np.int64)),
                ],
                "/model/kept_positions",
            )
        head = head_weight(s)
        logits = self.matmul(normed, head, self.qm.quantized[head], "/lm_head/MatMul")
        if self.float is np.float16:
            (logits,) = g.op("Cast", [logits], "/lm_head/Cast", to=TensorProto.FLOAT)
        (out,) = g.op("Identity", [logits], "/lm_head/output", outputs=["logits"])
        g.output(out, TensorProto.FLOAT, ["batch", "sequence" if opt.all_logits else "kept_positions", s.vocab_size])
        g.metadata[BATCH_METADATA] = "1"
        return g
