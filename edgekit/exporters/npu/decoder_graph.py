"""The decoder as one npu graph: `width` tokens over a `context`-position KV cache, in standard
ONNX ops with QDQ activations (see the package's docstring for what QNN HTP takes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..onnx_graph import Graph
from .layout import DATA_FILE
from .qdq_graph import QdqGraph
from .weight_formats import FORMATS
from .weights import NpuWeights

GELU_SLOPE = np.array(2 * np.sqrt(2 / np.pi), np.float32)


class DecoderGraph(QdqGraph):
    """ranges None: the float graph, for calibration (see QdqGraph)."""

    def __init__(self, w: NpuWeights, width: int, context: int, ranges: dict | None, data: Path, written: dict):
        super().__init__("edgekit_npu_decoder", ranges, data, written)
        self.w, self.s, self.width, self.ctx = w, w.spec, width, context

    def matmul(self, x: str, key: str, output: str | None = None) -> str:
        fmt, encoded = self.w.mats[key]
        y = FORMATS[fmt].product(self.g, key, encoded, x)
        bias = key + ".bias" in self.w.dense
        y = self.act(y, output=None if bias else output)
        if bias:
            (y,) = self.g.op("Add", [y, self.const_act(key + ".bias", self.w.dense[key + ".bias"])], key + "/bias")
            y = self.act(y, output=output)
        return y

    def norm(self, x: str, scope: str, weight: str | None = None) -> str:
        """RMSNormalization (ONNX opset 23) over the last axis; `weight` a dense weight's key (by
        default `{scope}.weight` where the weights hold it), else a scale of 1 (the norm's weight is
        folded into the next MatMul's weights)."""
        weight = weight or (scope + ".weight" if scope + ".weight" in self.w.dense else None)
        if weight is None:
            scale = self.const_act(f"ones_{self.s.hidden_size}", np.ones(self.s.hidden_size, np.float32))
        else:
            scale = self.const_act(weight, self.w.dense[weight])
        return self.op("RMSNormalization", [x, scale], scope, axis=-1, epsilon=float(self.s.rms_norm_eps))

    def activation(self, x: str, scope: str) -> str:
        """silu(x) = x * sigmoid(x); gelu's tanh form = x * sigmoid(2c (x + 0.044715 x^3)), c = sqrt(2/pi)."""
        z = x
        if self.s.hidden_act != "silu":
            cube = self.op("Mul", [self.op("Mul", [x, x], scope + "/square"), x], scope + "/cube")
            cubic = self.const_act("gelu_cubic", np.array(0.044715, np.float32))
            inner = self.op("Add", [x, self.op("Mul", [cube, cubic], scope + "/cubic")], scope + "/inner")
            z = self.op("Mul", [inner, self.const_act("gelu_slope", GELU_SLOPE)], scope + "/slope")
        return self.op("Mul", [x, self.op("Sigmoid", [z], scope + "/sigmoid")], scope)

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
            act = self.activation(gate, f"{scope}/mlp/act")
            down = self.matmul(self.op("Mul", [act, up], f"{scope}/mlp/gate_times_up"), f"{scope}/mlp/down_proj")
            h = self.op("Add", [h, down], f"{scope}/mlp/residual")
        self.matmul(self.norm(h, "/model/norm"), "/lm_head", output="logits")
        if self.ranges is None:
            for name in self.observed:
                g.output(name, f, None)
        return g


def save_graph(folder: Path, name: str, w: NpuWeights, width: int, context: int, ranges, written: dict) -> None:
    """Write the graph `name` into `folder`; its weights go into (or are already in) DATA_FILE."""
    DecoderGraph(w, width, context, ranges, folder / DATA_FILE, written).build().save(folder / name)
