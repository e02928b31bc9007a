"""A thin layer over onnx.helper: namespaced node names, and initializers over 1 KB streamed to the
external data file as they are made, so a graph never holds the model's weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"
OPSET = 21
EXTERNAL_MIN_BYTES = 1024


@dataclass(frozen=True)
class Stored:
    """Where an initializer lives in the external data file."""

    offset: int
    length: int
    shape: tuple[int, ...]
    elem_type: int  # onnx.TensorProto's data type


def tensor_bytes(array: np.ndarray) -> bytes:
    """An initializer's bytes as ONNX stores them: 4-bit types (ml_dtypes' int4/uint4, one value a
    byte in numpy) two to a byte, the first value in the low nibble."""
    if array.dtype.name not in ("int4", "uint4"):
        return array.tobytes()
    nibbles = array.reshape(-1).view(np.uint8) & 0x0F
    nibbles = np.append(nibbles, np.uint8(0)) if len(nibbles) % 2 else nibbles
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


class Graph:
    """`data` is the external data file; `written` (shared between graphs over the same file) maps
    initializer names already in it to where, so a second graph points at them instead."""

    def __init__(self, name: str, data: Path | None = None, written: dict[str, Stored] | None = None):
        from onnx import helper

        self.helper = helper
        self.name = name
        self.data = data
        self.written = written if written is not None else {}
        self.nodes: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}  # the small ones, kept in the graph itself
        self.external: list[str] = []  # this graph's initializers in the data file
        self.metadata: dict[str, str] = {}  # the model's metadata_props (ONNX Runtime: custom_metadata_map)

    def __contains__(self, name: str) -> bool:
        return name in self.initializers or name in self.external

    def const(self, name: str, value: np.ndarray | Callable[[], np.ndarray]) -> str:
        """An initializer; `value` may be a function, called only when `name` is not already in the
        data file."""
        if name in self:
            return name
        if name in self.written:
            self.external.append(name)
            return name
        array = np.ascontiguousarray(value() if callable(value) else value)
        if self.data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.initializers[name] = array
            return name
        raw = tensor_bytes(array)
        with open(self.data, "ab") as f:
            f.write(b"\0" * (-f.tell() % 64))  # aligned, so the runtime can map it in place
            offset = f.tell()
            f.write(raw)
        elem_type = self.helper.np_dtype_to_tensor_dtype(array.dtype)
        self.written[name] = Stored(offset, len(raw), tuple(array.shape), elem_type)
        self.external.append(name)
        return name

    def op(
        self, op_type: str, inputs: list[str], scope: str, outputs: int | list[str] = 1, domain: str = "", **attrs: Any
    ) -> list[str]:
        """Add a node named `{scope}/{op_type}`; outputs default to `{scope}/{op_type}/output_i`."""
        name = f"{scope}/{op_type}"
        if isinstance(outputs, int):
            outputs = [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def input(self, name: str, elem_type: int, shape: list[Any]) -> str:
        self.inputs.append(self.helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape: list[Any]) -> str:
        self.outputs.append(self.helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def save(self, path: Path) -> None:
        """Write the graph to `path`; its large initializers point into the data file."""
        from onnx import TensorProto, numpy_helper

        inits = [numpy_helper.from_array(array, name) for name, array in self.initializers.items()]
        for name in self.external:
            stored = self.written[name]
            tensor = TensorProto(name=name, dims=list(stored.shape), data_type=stored.elem_type)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", self.data.name),
                ("offset", str(stored.offset)),
                ("length", str(stored.length)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
        path.write_bytes(self.model(inits).SerializeToString())

    def model(self, inits: list[Any]):
        graph = self.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, inits)
        model = self.helper.make_model(
            graph,
            opset_imports=[self.helper.make_opsetid("", OPSET), self.helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="edgekit",
        )
        model.ir_version = 10
        if self.metadata:
            self.helper.set_model_props(model, self.metadata)
        return model
