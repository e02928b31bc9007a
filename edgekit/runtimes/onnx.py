"""ONNX Runtime backend for edgekit's decoder graphs.

The KV cache is allocated once for the session's max context, and each layer's past and present
are bound to the same buffer with IO binding, so no cache is copied per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..artifact import ALL_LOGITS_FILE, LOGITS_TO_KEEP
from ..errors import EdgekitError
from ..spec import ModelSpec
from .base import check_room, prefill_in_chunks
from .huge_pages import collapse_filled_heap

# Prompt tokens per run when neither the caller nor a profile says. GroupQueryAttention's CPU kernel
# holds heads x chunk x max context float32 scores per run (ONNX Runtime's arena keeps the peak):
# a 1536-token prompt in one run at a 2048 context took a 1B model's peak RSS up 586 MB, in chunks
# of 256 197 MB (most of it the KV cache), at the same tokens/s.
DEFAULT_PREFILL_CHUNK = 256

# the KV cache's element type, from the graph's past_key_values inputs (an int8 cache is exported so)
CACHE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def make_session(
    model_path: Path,
    providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
    threads: int | None = None,
    huge_pages: bool = False,
    spinning: bool = True,
):
    """huge_pages: move the weights the session repacked onto huge pages once it is built (Linux).
    spinning: ONNX Runtime's threads spin between runs, waiting for the next (faster for one
    sequence and for a batcher alike on a quiet machine, measured in bench/serve_matrix.py; on a
    CPU shared with other busy processes, turning it off gives them the cores)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    names = [p if isinstance(p, str) else p[0] for p in providers]
    missing = [n for n in names if n not in available]
    if missing:
        raise EdgekitError(
            f"execution provider {', '.join(missing)} is not installed; available here: {', '.join(available)}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(model_path), options, providers=list(providers))
    if huge_pages:
        collapse_filled_heap()
    return session


class OnnxRuntime:
    def __init__(
        self,
        model_path: Path,
        spec: ModelSpec,
        max_context: int,
        *,
        providers: Sequence[str | tuple[str, dict]] = ("CPUExecutionProvider",),
        threads: int | None = None,
        kv_dtype=np.float32,
        prefill_chunk: int | None = None,
        huge_pages: bool = False,
    ):
        import onnxruntime as ort

        self.spec = spec
        self.max_context = max_context
        self.length = 0
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        self.session = make_session(model_path, providers, threads, huge_pages)
        past = {i.name: i.type for i in self.session.get_inputs()}.get("past_key_values.0.key")
        kv_dtype = CACHE_TYPES.get(past, kv_dtype)
        self.kv_dtype = np.dtype(kv_dtype)
        self._every_position: OnnxRuntime | None = None
        self._options = (model_path, spec, providers, threads, kv_dtype, huge_pages)
        device = "cuda" if any("CUDA" in (p if isinstance(p, str) else p[0]) for p in providers) else "cpu"
        shape = [1, spec.num_kv_heads, max_context, spec.head_dim]
        self.cache = [
            (
                ort.OrtValue.ortvalue_from_shape_and_type(shape, kv_dtype, device),
                ort.OrtValue.ortvalue_from_shape_and_type(shape, kv_dtype, device),
            )
            for _ in range(spec.num_layers)
        ]
        outputs = self.session.get_outputs()
        self._logits_index = [o.name for o in outputs].index("logits")
        self.binding = self.session.io_binding()
        self.kv_nbytes = 2 * spec.num_layers * int(np.prod(shape)) * self.kv_dtype.itemsize  # allocated once
        self._mask = np.ones((1, max_context), dtype=np.int64)
        self._token = np.zeros((1, 1), dtype=np.int64)
        # The generation graph returns the last position only: its logits land in one preallocated
        # buffer (a numpy array ONNX Runtime writes into), which saves binding a new output per token.
        self._last_logits = None
        self._last_logits_value = None
        if outputs[self._logits_index].shape[1] != "sequence":
            self._last_logits = np.zeros((1, 1, spec.vocab_size), dtype=np.float32)
            self._last_logits_value = ort.OrtValue.ortvalue_from_numpy(self._last_logits)
            self.binding.bind_ortvalue_output("logits", self._last_logits_value)
        # graphs exported since the verify step take how many last positions get logits
        self._keeps_positions = LOGITS_TO_KEEP in {i.name for i in self.session.get_inputs()}
        self.why_no_verify = (
            None
            if self._keeps_positions or self._last_logits is None
            else f"{model_path.parent}: its graph returns the last position only (exported before "
            "speculative decoding); re-export it to verify proposed tokens"
        )
        if self._keeps_positions:
            self._keep_one = np.ones(1, dtype=np.int64)
            self.binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep_one)
        for n, (k, v) in enumerate(self.cache):
            self.binding.bind_ortvalue_input(f"past_key_values.{n}.key", k)
            self.binding.bind_ortvalue_input(f"past_key_values.{n}.value", v)
            self.binding.bind_ortvalue_output(f"present.{n}.key", k)
            self.binding.bind_ortvalue_output(f"present.{n}.value", v)

    def _check_room(self, new: int) -> int:
        return check_room(self.length, new, self.max_context)

    def _run(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [positions returned, vocab]."""
        total = self._check_room(len(ids))
        if len(ids) == 1:
            self._token[0, 0] = ids[0]
            self.binding.bind_cpu_input("input_ids", self._token)
        else:
            self.binding.bind_cpu_input("input_ids", np.asarray(ids, dtype=np.int64).reshape(1, -1))
        self.binding.bind_cpu_input("attention_mask", self._mask[:, :total])
        if self._last_logits is None:
            self.binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(self.binding)
        self.length = total
        if self._last_logits is not None:
            return self._last_logits[0].copy()
        return self.binding.get_outputs()[self._logits_index].numpy()[0]

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        return prefill_in_chunks(self, ids, self.prefill_chunk, self._run)

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Every position's logits [len(ids), vocab] of ids run after the cache in one pass: the
        graph is asked for len(ids) positions, written into a buffer of that size, then set back to
        one position and the decode buffer."""
        if self._last_logits is None:  # a graph that returns every position anyway
            return self._run(ids)
        if self.why_no_verify:
            raise EdgekitError(self.why_no_verify)
        import onnxruntime as ort

        logits = np.empty((1, len(ids), self.spec.vocab_size), dtype=np.float32)
        self.binding.bind_cpu_input(LOGITS_TO_KEEP, np.array([len(ids)], dtype=np.int64))
        self.binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        try:
            self._run(ids)
        finally:
            self.binding.bind_cpu_input(LOGITS_TO_KEEP, self._keep_one)
            self.binding.bind_ortvalue_output("logits", self._last_logits_value)
        return logits[0]

    def decode(self, token: int) -> np.ndarray:
        return self._run([token])[-1]

    def logits_all(self, ids: Sequence[int]) -> np.ndarray:
        self.reset()
        if self._last_logits is None:
            return self._run(ids)
        if self._keeps_positions:  # the generation graph asked for every position; the cache is left empty
            try:
                return self.verify(ids)
            finally:
                self.reset()
        # an older generation graph returns the last position only; evaluation loads its twin over the
        # same weight file, which returns every position, the first time it is asked for
        if self._every_position is None:
            path, spec, providers, threads, kv_dtype, huge_pages = self._options
            twin = path.with_name(ALL_LOGITS_FILE)
            if not twin.is_file():
                raise EdgekitError(
                    f"{path.parent}: no {ALL_LOGITS_FILE} to compute every position's logits; re-export it"
                )
            self._every_position = OnnxRuntime(
                twin,
                spec,
                self.max_context,
                providers=providers,
                threads=threads,
                kv_dtype=kv_dtype,
                huge_pages=huge_pages,
            )
        return self._every_position.logits_all(ids)

    def reset(self) -> None:
        self.length = 0

    def trim(self, length: int) -> None:
        self.length = min(self.length, length)
