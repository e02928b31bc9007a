"""The npu flavor: static-shape QDQ ONNX graphs for Qualcomm's QNN HTP backend (the Hexagon NPU).

What QNN HTP takes (measured on the HTP emulator of onnxruntime-qnn 2.7 / QNN 2.51, CPU fallback
off) shapes this graph:
- static shapes only: a prefill graph of `chunk` tokens and a decode graph of 1 token, both over
  a fixed KV cache of `context` positions; the runtime pads the last prompt chunk;
- QDQ: every activation is uint16 through QuantizeLinear -> DequantizeLinear with a range from
  calibration; data-movement ops (Reshape, Transpose, Slice, Concat) keep their input's range;
- weights int8 per output channel through DequantizeLinear (symmetric). Blocked int4
  DequantizeLinear is refused; QNN's own int4 block format (LPBQ: uint8 block scales under
  per-channel float scales) compiles but computes wrong numbers on the x86-64 emulator; int4 per
  channel runs but one 4-bit grid per row costs too much quality. So the recipe's 4-bit weights
  (RTN/HQQ/AWQ/GPTQ, as for every flavor) are stored as int8 per channel: the same values within
  1/254 of each row's largest, twice the bytes of int4;
- standard ONNX ops only: RMSNormalization (opset 23; its weight folded into the next MatMul's
  weights; a written-out ReduceL2 -> Div norm made QNN insert float ops and fail to finalize),
  rotary as x*cos + swap_halves(x)*sin with the tables as inputs, attention as
  MatMul -> Add(mask) -> Softmax -> MatMul with the additive mask an input, SwiGLU as Sigmoid and
  Mul. Keys are kept transposed [1, kv, head_dim, ctx] so no per-step transpose of the cache;
- the HTP's own arithmetic is not bit-exact QDQ: uint16 x int8 MatMuls land ~110 LSB off the
  exact product, and a uint16 x uint16 MatMul takes its second input at 8 bits.
The embedding lookup is done by the runtime from an int8 per-row table (embed_tokens.*.npy).
Node names follow `/model/layers.{n}/{block}/{op}` as in the cpu flavor.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..spec import ModelSpec
from .onnx_graph import Graph

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3")
DATA_FILE = "model.npu.data"
GRAPHS = {"prefill": "model.npu.prefill.onnx", "decode": "model.npu.decode.onnx"}
CONTEXT_GRAPHS = {"prefill": "model.npu.prefill.ctx.onnx", "decode": "model.npu.decode.ctx.onnx"}
EMBEDDING = {"codes": "embed_tokens.int8.npy", "scales": "embed_tokens.scales.npy"}
# max |logit diff| / max |logit| against the numpy reference on the same (int8) weights:
TOLERANCE = 0.15  # the QDQ graphs with exact QDQ arithmetic (ONNX Runtime CPU): the uint16 rounding
MEDIAN_TOLERANCE = 0.025  # the same on QNN HTP, median over positions (tests, tiny models)
HTP_TOLERANCE = 0.5  # on QNN HTP, whose 16x8-bit MatMuls are not bit-exact (~110 LSB of 16 bits)
U16 = 65535
MARGIN = 1.1  # calibrated activation ranges are widened by this factor away from zero


@dataclass(frozen=True)
class NpuOptions:
    context: int = 512  # KV cache positions (static)
    chunk: int = 64  # prompt tokens per prefill run (static)
    soc_model: str = ""  # QNN soc_model number: also write EPContext models compiled for that SoC
    htp_arch: str = ""  # QNN htp_arch of that SoC (73: Snapdragon X Elite, 75: 8 Gen 3)
    calibration_samples: int = 8

    @property
    def qnn_options(self) -> dict[str, str]:
        return {k: v for k, v in (("soc_model", self.soc_model), ("htp_arch", self.htp_arch)) if v}


@dataclass
class NpuWeights:
    """Per output channel int8 weights, transposed for MatMul ([in, out] codes, [out] scales), the
    small float tensors, and the exact float weights the graph computes with (for the reference)."""

    spec: ModelSpec
    mats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    embedding: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def reference_spec(self) -> ModelSpec:
        return replace(self.spec, fused_qkv=False, fused_gate_up=False, tie_word_embeddings=False)


def per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """codes int8 [out, in] and scales [out] of w [out, in], symmetric."""
    scales = np.maximum(np.abs(w).max(axis=1), 1e-12).astype(np.float32) / 127
    return np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8), scales


def npu_weights(spec: ModelSpec, weights) -> NpuWeights:
    """`weights`: the quantized model's dequantized weights. Each RMS norm's weight (and, without
    qk norm, attention's 1/sqrt(head_dim)) is folded into the following MatMul's weights, which are
    then stored int8 per output channel; fused q/k/v and gate/up are split into their parts (exact,
    the scales being per row). The reference weights are the values the graph computes with, the
    folded factors divided out again and the norms' weights set to 1."""
    s, out = spec, NpuWeights(spec)
    q_factor = np.float32(1.0) if s.qk_norm else np.float32(1 / np.sqrt(s.head_dim))
    ref = out.reference

    def get(name: str) -> np.ndarray | None:
        return np.asarray(weights[name], np.float32) if name in weights else None

    def linear(key: str, name: str, w: np.ndarray, norm: np.ndarray | None, bias: np.ndarray | None, factor=1.0):
        fold = (norm if norm is not None else np.ones(w.shape[1], np.float32)) * np.float32(factor)
        codes, scales = per_channel_int8(w * fold[None, :])
        out.mats[key] = (np.ascontiguousarray(codes.T), scales)
        divide = np.float32(factor)
        ref[name + ".weight"] = codes.astype(np.float32) * (scales / divide)[:, None]
        if bias is not None:
            out.dense[key + ".bias"] = (bias * np.float32(factor)).astype(np.float32)
            ref[name + ".bias"] = bias

    ones = np.ones(s.hidden_size, np.float32)
    for n in range(s.num_layers):
        p, key = f"model.layers.{n}.", f"/model/layers.{n}"
        g_in, g_post = get(p + "input_layernorm.weight"), get(p + "post_attention_layernorm.weight")
        if s.fused_qkv:
            parts = np.split(get(p + "self_attn.qkv_proj.weight"), [s.q_size, s.q_size + s.kv_size])
        else:
            parts = [get(p + f"self_attn.{x}_proj.weight") for x in "qkv"]
        for x, w in zip("qkv", parts, strict=True):
            factor = q_factor if x == "q" else 1.0
            bias = None if s.fused_qkv else get(p + f"self_attn.{x}_proj.bias")
            linear(f"{key}/attn/{x}_proj", p + f"self_attn.{x}_proj", w, g_in, bias, factor)
        linear(
            f"{key}/attn/o_proj",
            p + "self_attn.o_proj",
            get(p + "self_attn.o_proj.weight"),
            None,
            get(p + "self_attn.o_proj.bias"),
        )
        if s.qk_norm:
            for x, factor in (("q", 1 / np.sqrt(s.head_dim)), ("k", 1.0)):
                g = get(p + f"self_attn.{x}_norm.weight")
                out.dense[f"{key}/attn/{x}_norm.weight"] = (g * factor).astype(np.float32)
                ref[p + f"self_attn.{x}_norm.weight"] = g
        if s.fused_gate_up:
            gate, up = np.split(get(p + "mlp.gate_up_proj.weight"), 2)
        else:
            gate, up = get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")
        for x, w in (("gate", gate), ("up", up)):
            linear(f"{key}/mlp/{x}_proj", p + f"mlp.{x}_proj", w, g_post, get(p + f"mlp.{x}_proj.bias"))
        linear(
            f"{key}/mlp/down_proj",
            p + "mlp.down_proj",
            get(p + "mlp.down_proj.weight"),
            None,
            get(p + "mlp.down_proj.bias"),
        )
        ref[p + "input_layernorm.weight"] = ref[p + "post_attention_layernorm.weight"] = ones
    head = get("model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight")
    linear("/lm_head", "lm_head", head, get("model.norm.weight"), None)
    ref["model.norm.weight"] = ones
    codes, scales = per_channel_int8(get("model.embed_tokens.weight"))
    out.embedding = (codes, scales)
    ref["model.embed_tokens.weight"] = codes.astype(np.float32) * scales[:, None]
    return out


class Opset23Graph(Graph):
    """ONNX opset 23, for RMSNormalization (QNN HTP runs it natively; a written-out norm of
    ReduceL2/Div or ReduceMean/Sqrt is lowered to float ops that the HTP could not finalize)."""

    def model(self, inits: list[Any]):
        model = super().model(inits)
        model.opset_import[0].version = 23
        model.ir_version = 11
        return model


def u16_params(lo: float, hi: float) -> tuple[np.float32, np.uint16]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    hi = max(hi, lo + 1e-6)
    scale = (hi - lo) / U16
    return np.float32(scale), np.uint16(np.clip(round(-lo / scale), 0, U16))


class NpuBuilder:
    """One graph of `width` tokens over a `context`-position KV cache. ranges None: the float graph
    (for calibration; every activation is also a graph output); otherwise every activation gets a
    uint16 Q -> DQ pair with ranges[name]."""

    def __init__(self, w: NpuWeights, width: int, context: int, ranges: dict | None, data: Path, written: dict):
        self.w, self.s, self.width, self.ctx = w, w.spec, width, context
        self.ranges = dict(ranges) if ranges is not None else None
        self.g = Opset23Graph("edgekit_npu_decoder", data, written)
        self.observed: list[str] = []
        self.inputs: set[str] = set()
        self.constants: dict[str, str] = {}
        self.key_of: dict[str, str] = {}  # tensor -> the range it is quantized with

    def act(self, tensor: str, key: str | None = None, output: str | None = None) -> str:
        """The activation `tensor` as the next op reads it: through Q -> DQ with the range of `key`
        (its own by default). `output`: name the result (a graph output)."""
        key = key or tensor
        if self.ranges is None:
            if key == tensor and tensor not in self.inputs:
                self.observed.append(tensor)
            if output:
                (tensor,) = self.g.op("Identity", [tensor], tensor + "/as_output", outputs=[output])
            self.key_of[tensor] = key
            return tensor
        scale, zero = u16_params(*self.ranges[key])
        sname, zname = self.g.const(f"qdq/{key}/scale", scale), self.g.const(f"qdq/{key}/zero", zero)
        (q,) = self.g.op("QuantizeLinear", [tensor, sname, zname], tensor)
        outs = [output] if output else 1
        (dq,) = self.g.op("DequantizeLinear", [q, sname, zname], tensor, outputs=outs)
        self.key_of[dq] = key
        return dq

    def op(self, op_type: str, inputs: list[str], scope: str, **attrs: Any) -> str:
        (y,) = self.g.op(op_type, inputs, scope, **attrs)
        return self.act(y)

    def move(self, op_type: str, inputs: list[str], scope: str, **attrs: Any) -> str:
        """A data-movement op: its output keeps its first input's range."""
        (y,) = self.g.op(op_type, inputs, scope, **attrs)
        return self.act(y, self.key_of[inputs[0]])

    def const_act(self, name: str, value: np.ndarray) -> str:
        """A small float constant through a uint16 DequantizeLinear (QNN wants quantized inputs)."""
        if self.ranges is None:
            return self.g.const(name, value.astype(np.float32))
        if name in self.constants:
            return self.constants[name]
        scale, zero = u16_params(value.min(), value.max())
        codes = np.clip(np.round(value / scale) + int(zero), 0, U16).astype(np.uint16)
        ins = [
            self.g.const(name + ".u16", codes),
            self.g.const(name + ".scale", scale),
            self.g.const(name + ".zero", zero),
        ]
        (self.constants[name],) = self.g.op("DequantizeLinear", ins, "/model/constants/" + name)
        return self.constants[name]

    def shape(self, name: str, dims: list[int]) -> str:
        return self.g.const(f"const/{name}", np.array(dims, np.int64))

    def matmul(self, x: str, key: str, output: str | None = None) -> str:
        codes, scales = self.w.mats[key]
        ins = [
            self.g.const(key + ".int8", codes),
            self.g.const(key + ".scales", scales),
            self.g.const(key + ".zeros", np.zeros(len(scales), np.int8)),
        ]
        (w,) = self.g.op("DequantizeLinear", ins, key + "/weight", axis=1)
        bias = key + ".bias" in self.w.dense
        (y,) = self.g.op("MatMul", [x, w], key)
        y = self.act(y, output=None if bias else output)
        if bias:
            (y,) = self.g.op("Add", [y, self.const_act(key + ".bias", self.w.dense[key + ".bias"])], key + "/bias")
            y = self.act(y, output=output)
        return y

    def norm(self, x: str, scope: str, weight: str | None = None) -> str:
        """RMSNormalization (ONNX opset 23) over the last axis; `weight` a dense weight's key, else
        a scale of 1 (the norm's weight is folded into the next MatMul's weights)."""
        if weight is None:
            scale = self.const_act(f"ones_{self.s.hidden_size}", np.ones(self.s.hidden_size, np.float32))
        else:
            scale = self.const_act(weight, self.w.dense[weight])
        return self.op("RMSNormalization", [x, scale], scope, axis=-1, epsilon=float(self.s.rms_norm_eps))

    def heads(self, x: str, count: int, scope: str) -> str:
        """[1, T, count * d] -> [1, count, T, d]."""
        y = self.move("Reshape", [x, self.shape(f"heads_{count}", [1, self.width, count, self.s.head_dim])], scope)
        return self.move("Transpose", [y], scope, perm=[0, 2, 1, 3])

    def rotary(self, x: str, cos: str, sin: str, scope: str) -> str:
        half, r = self.s.rotary_dim // 2, self.s.rotary_dim
        d = self.s.head_dim
        bounds = [(half, r), (0, half)] + ([(r, d)] if r < d else [])
        parts = [
            self.move(
                "Slice",
                [x, self.shape(f"start_{a}", [a]), self.shape(f"end_{b}", [b]), self.shape("axes_last", [-1])],
                f"{scope}/slice_{a}_{b}",
            )
            for a, b in bounds
        ]
        swapped = self.move("Concat", parts, scope + "/swap", axis=-1)
        a = self.op("Mul", [x, cos], scope + "/cos")
        b = self.op("Mul", [swapped, sin], scope + "/sin")
        return self.op("Add", [a, b], scope)

    def build(self) -> Graph:
        from onnx import TensorProto

        s, g, T, C = self.s, self.g, self.width, self.ctx
        kv, d, group = s.num_kv_heads, s.head_dim, s.num_heads // s.num_kv_heads
        f = TensorProto.FLOAT
        self.inputs = {"inputs_embeds", "cos", "sin", "attention_mask"}
        h = self.act(g.input("inputs_embeds", f, [1, T, s.hidden_size]))
        cos = self.act(g.input("cos", f, [1, 1, T, d]))
        sin = self.act(g.input("sin", f, [1, 1, T, d]))
        mask = self.act(g.input("attention_mask", f, [1, 1, group * T, C + T]))
        g.output("logits", f, [1, T, s.vocab_size])
        for n in range(s.num_layers):
            g.output(f"present.{n}.key", f, [1, kv, d, T])
            g.output(f"present.{n}.value", f, [1, kv, T, d])
        for n in range(s.num_layers):
            scope = f"/model/layers.{n}"
            x = self.norm(h, scope + "/input_layernorm")
            q, k, v = (
                self.heads(self.matmul(x, f"{scope}/attn/{p}_proj"), c, f"{scope}/attn/{p}_heads")
                for p, c in (("q", s.num_heads), ("k", kv), ("v", kv))
            )
            if s.qk_norm:
                q = self.norm(q, f"{scope}/attn/q_norm", f"{scope}/attn/q_norm.weight")
                k = self.norm(k, f"{scope}/attn/k_norm", f"{scope}/attn/k_norm.weight")
            q = self.rotary(q, cos, sin, f"{scope}/attn/q_rotary")
            k = self.rotary(k, cos, sin, f"{scope}/attn/k_rotary")
            (kt,) = g.op("Transpose", [k], f"{scope}/attn/k_transpose", perm=[0, 1, 3, 2])
            kt = self.act(kt, self.key_of[k], output=f"present.{n}.key")
            v = self.act(v, self.key_of[v], output=f"present.{n}.value")
            past_k = self.act(g.input(f"past_key_values.{n}.key", f, [1, kv, d, C]), self.key_of[k])
            past_v = self.act(g.input(f"past_key_values.{n}.value", f, [1, kv, C, d]), self.key_of[v])
            keys = self.move("Concat", [past_k, kt], f"{scope}/attn/keys", axis=3)
            values = self.move("Concat", [past_v, v], f"{scope}/attn/values", axis=2)
            qg = self.move("Reshape", [q, self.shape("grouped", [1, kv, group * T, d])], f"{scope}/attn/q_group")
            scores = self.op("MatMul", [qg, keys], f"{scope}/attn/scores")
            masked = self.op("Add", [scores, mask], f"{scope}/attn/mask")
            probs = self.op("Softmax", [masked], f"{scope}/attn/softmax", axis=-1)
            attn = self.op("MatMul", [probs, values], f"{scope}/attn/context")
            attn = self.move("Reshape", [attn, self.shape("ungroup", [1, s.num_heads, T, d])], f"{scope}/attn/ungroup")
            attn = self.move("Transpose", [attn], f"{scope}/attn/merge", perm=[0, 2, 1, 3])
            attn = self.move("Reshape", [attn, self.shape("merged", [1, T, s.q_size])], f"{scope}/attn/merge")
            h = self.op("Add", [h, self.matmul(attn, f"{scope}/attn/o_proj")], f"{scope}/attn/residual")
            x = self.norm(h, scope + "/post_attention_layernorm")
            gate = self.matmul(x, f"{scope}/mlp/gate_proj")
            up = self.matmul(x, f"{scope}/mlp/up_proj")
            act = self.op("Mul", [gate, self.op("Sigmoid", [gate], f"{scope}/mlp/act")], f"{scope}/mlp/act")
            down = self.matmul(self.op("Mul", [act, up], f"{scope}/mlp/gate_times_up"), f"{scope}/mlp/down_proj")
            h = self.op("Add", [h, down], f"{scope}/mlp/residual")
        self.matmul(self.norm(h, "/model/norm"), "/lm_head", output="logits")
        if self.ranges is None:
            for name in self.observed:
                g.output(name, f, None)
        return g


def _save(folder: Path, name: str, w: NpuWeights, width: int, options: NpuOptions, ranges, written: dict) -> None:
    NpuBuilder(w, width, options.context, ranges, folder / DATA_FILE, written).build().save(folder / name)


def calibrate(
    folder: Path, w: NpuWeights, options: NpuOptions, sequences: list[list[int]], decode_steps: int = 8
) -> dict[str, tuple[float, float]]:
    """Every activation's [min, max] over `sequences` (each prefilled in chunks, then a few greedy
    decode steps), from the float graphs on ONNX Runtime's CPU provider: the same graph, weights and
    cache handling as the QDQ graphs, without the Q -> DQ pairs. The attention mask's value comes
    from the scores' range: low enough that a masked position weighs e^-20 of any allowed one."""
    from ..runtimes.onnx_npu import NpuRuntime, cpu_session

    calib = folder / ".calibration"
    calib.mkdir()
    seen: dict[str, list[float]] = {}

    def observe(named: dict[str, np.ndarray]) -> None:
        for name, value in named.items():
            if name.startswith(("present.", "past_key_values.")) or name in ("cos", "sin", "attention_mask"):
                continue
            lo, hi = float(value.min()), float(value.max())
            old = seen.setdefault(name, [lo, hi])
            old[0], old[1] = min(old[0], lo), max(old[1], hi)

    try:
        written: dict = {}
        _save(calib, "prefill.onnx", w, options.chunk, options, None, written)
        _save(calib, "decode.onnx", w, 1, options, None, written)
        sessions = (cpu_session(calib / "prefill.onnx"), cpu_session(calib / "decode.onnx"))
        npu = {"context": options.context, "chunk": options.chunk, "mask_value": -1e4}
        runtime = NpuRuntime(calib, w.spec, npu, sessions=sessions, embedding=w.embedding)
        runtime.observer = observe
        for ids in sequences:
            ids = ids[: max(1, options.context - decode_steps - 1)]
            runtime.reset()
            logits = runtime.prefill(ids)
            for _ in range(decode_steps):
                logits = runtime.decode(int(np.argmax(logits)))
        del runtime, sessions
    finally:
        import shutil

        shutil.rmtree(calib, ignore_errors=True)
    scores = [v for k, v in seen.items() if k.endswith("/attn/scores/MatMul/output_0")]
    lo, hi = min(v[0] for v in scores), max(v[1] for v in scores)
    mask = -float(np.ceil(hi - lo + 20))
    # calibration text never shows every value a prompt will: each range gets MARGIN room on each
    # side of zero (uint16 has the resolution to spare), softmax and sigmoid get their exact [0, 1]
    ranges = {k: (v[0] * MARGIN, v[1] * MARGIN) for k, v in seen.items()}
    ranges.update({k: (0.0, 1.0) for k in seen if k.endswith(("/Softmax/output_0", "/Sigmoid/output_0"))})
    for k, v in seen.items():
        if k.endswith("/attn/mask/Add/output_0"):
            ranges[k] = (lo + mask, v[1])
    ranges["attention_mask"] = (mask, 0.0)
    ranges["cos"] = ranges["sin"] = (-1.0, 1.0)
    ranges["__mask_value__"] = (mask, mask)
    return ranges


def write_npu(folder: Path, checkpoint, qm, options: NpuOptions, sequences: list[list[int]]) -> tuple[dict, NpuWeights]:
    """The prefill and decode QDQ graphs over one weight file, the int8 embedding table, the
    tokenizer. Returns the manifest's "npu" table and the weights (for verification)."""
    spec = checkpoint.spec
    if spec.family not in FAMILIES:
        raise EdgekitError(f"the npu flavor supports {', '.join(FAMILIES)}, not {spec.family}; use --flavor cpu")
    w = npu_weights(spec, qm.weights())
    ranges = calibrate(folder, w, options, sequences)
    mask_value = ranges.pop("__mask_value__")[0]
    written: dict = {}
    _save(folder, GRAPHS["prefill"], w, options.chunk, options, ranges, written)
    _save(folder, GRAPHS["decode"], w, 1, options, ranges, written)
    np.save(folder / EMBEDDING["codes"], w.embedding[0])
    np.save(folder / EMBEDDING["scales"], w.embedding[1])
    checkpoint.tokenizer.write(folder)
    npu = {
        "context": options.context,
        "chunk": options.chunk,
        "mask_value": mask_value,
        "graphs": dict(GRAPHS),
        "embedding": dict(EMBEDDING),
        "weights": "int8 per output channel (symmetric) through DequantizeLinear",
        "activations": "uint16 per tensor through QuantizeLinear/DequantizeLinear, calibrated",
        "calibration_sequences": len(sequences),
    }
    return npu, w


def verify_npu(folder: Path, npu: dict, w: NpuWeights, prompt: list[int], steps: int = 4) -> dict[str, Any]:
    """Prefill + greedy decode steps against the numpy reference on the weights the graphs hold:
    the QDQ graphs on ONNX Runtime's CPU provider (exact QDQ arithmetic: checks the graph, its
    weights and its ranges, within TOLERANCE), then on QNN HTP with CPU fallback disabled (within
    HTP_TOLERANCE: the HTP's own 16x8-bit MatMuls add their rounding). EPContext models must give
    the QDQ graphs' tokens on the HTP. Raises when any check fails."""
    from ..reference import ReferenceModel
    from ..runtimes.onnx_npu import NpuRuntime, cpu_session
    from .verify import compare, run_greedy

    plain = {k: v for k, v in npu.items() if k not in ("context_graphs", "qnn_options")}
    reference = ReferenceModel(w.reference_spec, w.reference)
    sessions = (cpu_session(folder / GRAPHS["prefill"]), cpu_session(folder / GRAPHS["decode"]))
    ids, got = run_greedy(NpuRuntime(folder, w.spec, plain, sessions=sessions, embedding=w.embedding), prompt, steps)
    result: dict[str, Any] = {"checked": True, "graph": "the QDQ graphs, then the same on QNN HTP"}
    result["qdq_on_cpu"] = compare(got, reference.forward(ids)[len(prompt) - 1 :], "ONNX Runtime CPU", TOLERANCE)
    ids, got = run_greedy(NpuRuntime(folder, w.spec, plain, embedding=w.embedding), prompt, steps)
    result["qnn_htp"] = compare(got, reference.forward(ids)[len(prompt) - 1 :], "QNN HTP", HTP_TOLERANCE)
    result["max_rel_error"] = result["qnn_htp"]["max_rel_error"]
    result["top1_agreement"] = result["qnn_htp"]["top1_agreement"]
    result["tolerance"] = HTP_TOLERANCE
    if npu.get("context_graphs"):
        runtime = NpuRuntime(folder, w.spec, npu, embedding=w.embedding, qnn_options=npu.get("qnn_options"))
        context_ids, context_got = run_greedy(runtime, prompt, steps)
        if context_ids != ids:
            raise EdgekitError(
                f"verification failed: the EPContext models chose tokens {context_ids[len(prompt) :]} where "
                f"the QDQ graphs chose {ids[len(prompt) :]} on QNN HTP; nothing was written"
            )
        result["epcontext"] = {"same_tokens": True, "max_logit_difference": float(np.abs(context_got - got).max())}
    return result


def compile_context(folder: Path, options: NpuOptions) -> dict[str, str]:
    """EPContext models: each graph compiled by QNN for options' SoC, the context binary embedded,
    so the device loads it without compiling. They need the same int8 embedding table beside them."""
    from ..runtimes.onnx_npu import qnn_session

    for name, graph in GRAPHS.items():
        config = {
            "ep.context_enable": "1",
            "ep.context_file_path": str(folder / CONTEXT_GRAPHS[name]),
            "ep.context_embed_mode": "1",
        }
        qnn_session(folder / graph, options.qnn_options, config)  # writes the model as it compiles
    return dict(CONTEXT_GRAPHS)


def require_npu(family: str | None = None) -> None:
    """One clear line when the npu flavor cannot be exported here."""
    if family is not None and family not in FAMILIES:
        raise EdgekitError(
            f"the npu flavor supports the {', '.join(FAMILIES)} families, not {family}; use --flavor cpu"
        )
    from ..runtimes.onnx_npu import qnn_ep

    qnn_ep()


def export_npu(
    folder: Path, checkpoint, qm, options: NpuOptions, calibration, prompt: list[int], note
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write, (optionally) compile and verify the npu artifact's files into `folder` (the staging
    folder). Returns (verification result, the manifest's "npu" table)."""
    from ..quant.calibration import calibration_sequences

    window = max(16, min(options.context - 16, max(4 * options.chunk, 256)))
    note(f"calibrating uint16 activation ranges: {calibration or 'samples generated by the model'}")
    sequences = calibration_sequences(checkpoint, window, options.calibration_samples, calibration)
    note("writing the QDQ prefill and decode graphs")
    npu, w = write_npu(folder, checkpoint, qm, options, sequences)
    if options.soc_model:
        note(f"compiling EPContext models for QNN soc_model {options.soc_model}")
        npu["context_graphs"] = compile_context(folder, options)
        npu["qnn_options"] = options.qnn_options
    note("verifying on QNN HTP against the numpy reference")
    result = verify_npu(folder, npu, w, prompt)
    return result, npu


DEFAULT_CONTEXT = 1024  # without a profile or --max-context: the KV cache is static, so not the model's
DEFAULT_CHUNK = 64


def npu_options(settings, prefill_chunk: int | None, max_context: int | None, context: int) -> NpuOptions:
    """The npu graphs' static sizes and EPContext target from the profile's settings."""
    if not max_context:
        context = min(context, DEFAULT_CONTEXT)
    chunk = min(prefill_chunk or DEFAULT_CHUNK, context)
    return NpuOptions(context, chunk, settings.qnn_soc_model, settings.qnn_htp_arch)
