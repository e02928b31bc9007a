"""A thin layer over onnx.helper: namespaced node names, initializers kept as numpy until save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"
OPSET = 21


class Graph:
    def __init__(self, name: str):
        from onnx import helper

        self.helper = helper
        self.name = name
        self.nodes: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.initializers: dict[str, np.ndarray] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = np.ascontiguousarray(value)
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

    def save(
        self, path: Path, data_name: str, written: dict[str, tuple[int, int]] | None = None
    ) -> dict[str, tuple[int, int]]:
        """Write the graph to `path` with every initializer over 1 KB in the external data file
        `data_name`, streamed tensor by tensor so the weights are never held twice. `written`
        (what an earlier save returned) makes this graph point at the tensors already in that
        file instead of writing them again. Returns name -> (offset, length) in the data file."""
        from onnx import TensorProto, helper, numpy_helper

        written = dict(written or {})
        inits = []
        with open(path.parent / data_name, "ab") as data:
            for name, array in self.initializers.items():
                if array.nbytes < 1024:
                    inits.append(numpy_helper.from_array(array, name))
                    continue
                if name not in written:
                    data.write(b"\0" * (-data.tell() % 64))  # aligned, so the runtime can map it in place
                    written[name] = (data.tell(), array.nbytes)
                    data.write(array.tobytes())
                offset, length = written[name]
                tensor = TensorProto(
                    name=name, dims=list(array.shape), data_type=helper.np_dtype_to_tensor_dtype(array.dtype)
                )
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                inits.append(tensor)
        path.write_bytes(self.model(inits).SerializeToString())
        return written

    def model(self, inits=None):
        from onnx import numpy_helper

        if inits is None:
            inits = [numpy_helper.from_array(v, k) for k, v in self.initializers.items()]
        graph = self.helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, inits)
        model = self.helper.make_model(
            graph,
            opset_imports=[self.helper.make_opsetid("", OPSET), self.helper.make_opsetid(MS_DOMAIN, 1)],
            producer_name="edgekit",
        )
        model.ir_version = 10
        return model
