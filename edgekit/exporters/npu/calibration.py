"""Every activation's uint16 range, observed on the float graphs (the QDQ graphs without their
Q -> DQ pairs) as they prefill calibration text and decode a few tokens."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ...runtimes.onnx_npu import NpuRuntime, cpu_session
from .decoder_graph import save_graph
from .options import NpuOptions
from .weights import NpuWeights

MARGIN = 1.1  # calibrated activation ranges are widened by this factor away from zero


def calibrate(
    folder: Path, w: NpuWeights, options: NpuOptions, sequences: list[list[int]], decode_steps: int = 8
) -> dict[str, tuple[float, float]]:
    """Every activation's [min, max] over `sequences` (each prefilled in chunks, then a few greedy
    decode steps), from the float graphs on ONNX Runtime's CPU provider: the same graph, weights and
    cache handling as the QDQ graphs, without the Q -> DQ pairs. The attention mask's value comes
    from the scores' range: low enough that a masked position weighs e^-20 of any allowed one."""
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
        save_graph(calib, "prefill.onnx", w, options.chunk, options.context, None, written)
        save_graph(calib, "decode.onnx", w, 1, options.context, None, written)
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
