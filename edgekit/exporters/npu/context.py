"""EPContext models: each npu graph compiled by QNN for one SoC, so the device loads it without
compiling. They need the same int8 embedding table beside them.

By default each graph's context binary is embedded in its model and holds its own copy of the
weights. `shared=True` compiles both graphs into one context binary beside the models
(`ep.share_ep_contexts`, QNN's weight sharing: one copy of the weights for both graphs); QNN's x86-64
emulator compiles it but refuses to load it (QNN_COMMON_ERROR_NOT_SUPPORTED, pinned by
tests/test_npu.py), so it cannot be verified here and the export does not write it."""

from __future__ import annotations

from pathlib import Path

from ...runtimes.onnx_npu import qnn_session
from .layout import CONTEXT_GRAPHS, GRAPHS
from .options import NpuOptions


def compile_context(folder: Path, options: NpuOptions, shared: bool = False) -> dict[str, str]:
    names = list(GRAPHS)
    for name in names:
        config = {
            "ep.context_enable": "1",
            "ep.context_file_path": str(folder / CONTEXT_GRAPHS[name]),
            "ep.context_embed_mode": "0" if shared else "1",
        }
        if shared:
            config["ep.share_ep_contexts"] = "1"
            if name == names[-1]:  # the last graph of the group writes the one binary
                config["ep.stop_share_ep_contexts"] = "1"
        qnn_session(folder / GRAPHS[name], options.qnn_options, config)  # writes the model as it compiles
    return dict(CONTEXT_GRAPHS)
