"""A graph whose every activation passes through a uint16 QuantizeLinear -> DequantizeLinear pair
with a calibrated range (QNN HTP's QDQ format), or, without ranges, the same graph in float with
every activation also an output (what calibration observes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..onnx_graph import Graph

U16 = 65535


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


class QdqGraph:
    """Ops added to `g` with their activations quantized: ranges None: the float graph (every
    activation is recorded in `observed`, to become a graph output); otherwise every activation
    gets a uint16 Q -> DQ pair with ranges[name]."""

    def __init__(self, name: str, ranges: dict | None, data: Path, written: dict):
        self.ranges = dict(ranges) if ranges is not None else None
        self.g = Opset23Graph(name, data, written)
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
