"""EPContext models: each npu graph compiled by QNN for one SoC, the context binary embedded, so
the device loads it without compiling. They need the same int8 embedding table beside them."""

from __future__ import annotations

from pathlib import Path

from ...runtimes.onnx_npu import qnn_session
from .layout import CONTEXT_GRAPHS, GRAPHS
from .options import NpuOptions


def compile_context(folder: Path, options: NpuOptions) -> dict[str, str]:
    for name, graph in GRAPHS.items():
        config = {
            "ep.context_enable": "1",
            "ep.context_file_path": str(folder / CONTEXT_GRAPHS[name]),
            "ep.context_embed_mode": "1",
        }
        qnn_session(folder / graph, options.qnn_options, config)  # writes the model as it compiles
    return dict(CONTEXT_GRAPHS)
