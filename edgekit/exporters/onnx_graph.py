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
    dtype: str


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
        with open(self.data, "ab") as f:
            f.write(b"\0" * (-f.tell() % 64))  # aligned, so the runtime can map it in place
            offset = f.tell()
            f.write(array.tobytes())
        self.written[name] = Stored(offset, array.nbytes, tuple(array.shape), array.dtype.str)
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
        from onnx import TensorProto, helper, numpy_helper

        inits = [numpy_helper.from_array(array, name) for name, array in self.initializers.items()]
        for name in self.external:
            stored = self.written[name]
            tensor = TensorProto(
                name=name, dims=list(stored.shape), data_type=helper.np_dtype_to_tensor_dtype(np.dtype(stored.dtype))
            )
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
