"""ONNX Runtime backend for the npu flavor: two static-shape QDQ graphs (a prefill chunk of N tokens
and a 1-token decode step) run by the QNN execution provider's HTP backend with CPU fallback
disabled.

The graphs take the chunk's embeddings, rotary tables and additive attention mask as inputs, and
the fixed-size KV cache of every layer (keys transposed [1, kv, head_dim, ctx], values
[1, kv, ctx, head_dim]); they return the chunk's own keys/values, which this runtime writes into
its cache. The embedding rows are looked up here from the artifact's int8 table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..rope import rope_tables
from ..spec import ModelSpec
from .base import check_room, prefill_in_chunks

QNN_INSTALL = "pip install onnxruntime-qnn (or 'edgekit[npu]')"
_registered: list[str] = []


def qnn_ep():
    """The onnxruntime_qnn module, its plugin library registered with ONNX Runtime (once)."""
    import onnxruntime as ort

    try:
        import onnxruntime_qnn
    except ImportError:
        raise EdgekitError(
            f"the npu flavor runs on ONNX Runtime's QNN provider, which is not installed: {QNN_INSTALL}; "
            "or export the cpu flavor (--flavor cpu)"
        ) from None
    name = onnxruntime_qnn.get_ep_name()
    if not _registered:
        if not any(d.ep_name == name for d in ort.get_ep_devices()):
            ort.register_execution_provider_library(name, onnxruntime_qnn.get_library_path())
        _registered.append(name)
    return onnxruntime_qnn


def qnn_session(model: Path, options: Mapping[str, str] | None = None, config: Mapping[str, str] | None = None):
    """An InferenceSession on QNN's HTP backend, every node on it (CPU fallback disabled).
    `config`: extra session config entries (e.g. ep.context_enable to write an EPContext model)."""
    import onnxruntime as ort

    qnn = qnn_ep()
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == qnn.get_ep_name()]
    # the graph-input Q nodes and output DQ nodes run on the HTP too (not offloaded to the CPU EP)
    provider = {"backend_path": qnn.get_qnn_htp_path(), "offload_graph_io_quantization": "0", **(options or {})}
    so.add_provider_for_devices(devices, provider)
    try:
        return ort.InferenceSession(str(model), so)
    except Exception as exc:  # ONNX Runtime raises its own Fail/RuntimeException types
        raise EdgekitError(f"{model.name}: QNN HTP did not take the graph: {str(exc).splitlines()[0]}") from None


def cpu_session(model: Path):
    """The graph on ONNX Runtime's CPU provider with exact QDQ arithmetic: only the basic graph
    optimizations, because the extended ones rewrite DequantizeLinear(int8 per channel) -> MatMul
    into MatMulNBits, which computes with 8-bit activations (0.6% off the exact product)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


class NpuRuntime:
    """`npu`: the artifact's manifest["npu"] table; `sessions`: (prefill, decode) sessions, made on
    QNN HTP from the artifact's graphs when not given (calibration passes CPU sessions of the float
    graphs)."""

    def __init__(
        self,
        folder: Path,
        spec: ModelSpec,
        npu: Mapping[str, Any],
        max_context: int | None = None,
        sessions: tuple[Any, Any] | None = None,
        embedding: tuple[np.ndarray, np.ndarray] | None = None,
        qnn_options: Mapping[str, str] | None = None,
    ):
        self.spec = spec
        self.ctx = int(npu["context"])
        self.chunk = int(npu["chunk"])
        self.max_context = min(max_context or self.ctx, self.ctx)
        self.mask_value = np.float32(npu["mask_value"])
        self.length = 0
        self.why_no_verify = (
            "the npu flavor's graphs have static shapes: verifying a few proposed tokens would run a "
            f"whole {self.chunk}-token prefill chunk, so it decodes token by token"
        )
        if sessions is None:
            graphs = npu.get("context_graphs") or npu["graphs"]
            sessions = (
                qnn_session(folder / graphs["prefill"], qnn_options),
                qnn_session(folder / graphs["decode"], qnn_options),
            )
        self.prefill_session, self.decode_session = sessions
        if embedding is None:
            embedding = (
                np.load(folder / npu["embedding"]["codes"], mmap_mode="r"),
                np.load(folder / npu["embedding"]["scales"]),
            )
        self.embed_codes, self.embed_scales = embedding
        s = spec
        self.keys = np.zeros((s.num_layers, 1, s.num_kv_heads, s.head_dim, self.ctx), np.float32)
        self.values = np.zeros((s.num_layers, 1, s.num_kv_heads, self.ctx, s.head_dim), np.float32)
        cos, sin = rope_tables(s, self.ctx + self.chunk)
        self.cos, self.sin = rotary_inputs(cos, sin, s.head_dim)
        self.observer = None  # calibration: called with every run's outputs

    def _run(self, ids: Sequence[int], session: Any, width: int) -> np.ndarray:
        """Run `ids` (at most `width`) padded to `width` after the cached positions; returns the
        logits of the real positions [len(ids), vocab] and stores their keys/values."""
        s, n, start = self.spec, len(ids), self.length
        group = s.num_heads // s.num_kv_heads
        padded = np.zeros(width, np.int64)
        padded[:n] = ids
        embeds = (self.embed_codes[padded].astype(np.float32) * self.embed_scales[padded, None])[None]
        positions = np.minimum(np.arange(start, start + width), len(self.cos) - 1)
        mask = np.full((width, self.ctx + width), self.mask_value, np.float32)
        keys = np.arange(self.ctx + width)
        past, new = keys < start, keys >= self.ctx
        query = np.arange(width)[:, None]
        allowed = past[None, :] | (new[None, :] & (keys[None, :] - self.ctx <= query))
        if s.sliding_window:
            absolute = np.where(new, keys - self.ctx + start, keys)[None, :]
            allowed &= (query + start) - absolute < s.sliding_window
        mask[allowed] = 0
        feeds = {
            "inputs_embeds": embeds,
            "cos": self.cos[positions][None, None],
            "sin": self.sin[positions][None, None],
            "attention_mask": np.tile(mask, (group, 1))[None, None],
        }
        for layer in range(s.num_layers):
            feeds[f"past_key_values.{layer}.key"] = self.keys[layer]
            feeds[f"past_key_values.{layer}.value"] = self.values[layer]
        outputs = session.run(None, feeds)
        names = [o.name for o in session.get_outputs()]
        if self.observer is not None:
            self.observer({**feeds, **dict(zip(names, outputs, strict=True))})
        for layer in range(s.num_layers):
            self.keys[layer][..., start : start + n] = outputs[1 + 2 * layer][..., :n]
            self.values[layer][..., start : start + n, :] = outputs[2 + 2 * layer][..., :n, :]
        self.length = start + n
        return outputs[0][0, :n]

    def _run_prefill_graph(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids, self.prefill_session, self.chunk)

    def _run_decode_graph(self, ids: Sequence[int]) -> np.ndarray:
        return self._run(ids, self.decode_session, 1)

    def _graph_for(self, ids: Sequence[int]) -> Callable[[Sequence[int]], np.ndarray]:
        """A single token (a decode step, or a prompt of one) runs through the decode graph; a
        longer sequence through the prefill graph, every chunk of it, its last one padded."""
        return self._run_decode_graph if len(ids) == 1 else self._run_prefill_graph

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        ids = list(ids)
        return prefill_in_chunks(self, ids, self.chunk, self._graph_for(ids))

    def decode(self, token: int) -> np.ndarray:
        check_room(self.length, 1, self.max_context)
        return self._run_decode_graph([token])[-1]

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        ids = list(ids)
        check_room(0, len(ids), self.max_context)
        run = self._graph_for(ids)
        return np.concatenate([run(ids[i : i + self.chunk]) for i in range(0, len(ids), self.chunk)])

    def reset(self) -> None:
        self.length = 0

    def trim(self, length: int) -> None:
        self.length = min(self.length, length)


def rotary_inputs(cos: np.ndarray, sin: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables [positions, rotary_dim / 2] as the graph takes them, [positions, head_dim]:
    x_rot = x * cos + swap_halves(x) * sin, with the sign of the first half folded into sin and
    channels past rotary_dim left alone (cos 1, sin 0)."""
    rest = head_dim - 2 * cos.shape[1]
    ones, zeros = np.ones((len(cos), rest), np.float32), np.zeros((len(cos), rest), np.float32)
    return (
        np.concatenate([cos, cos, ones], axis=1).astype(np.float32),
        np.concatenate([-sin, sin, zeros], axis=1).astype(np.float32),
    )
