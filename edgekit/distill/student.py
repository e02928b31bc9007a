"""A student made from the teacher: a subset of its layers (renumbered), optionally a narrower MLP
keeping the intermediate channels that carry the most weight, and everything else copied."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgekitError
from ..families import LAYER_NAME, bias_of, layer_prefix, layer_weights, renumbered
from ..spec import ModelSpec


@dataclass
class StudentPlan:
    keep_layers: list[int]  # teacher layer indices, in order
    intermediate_size: int

    def to_dict(self) -> dict[str, Any]:
        return {"keep_layers": self.keep_layers, "intermediate_size": self.intermediate_size}


def draft_depth(spec: ModelSpec) -> int:
    """Layers of a draft model for speculative decoding when none are asked for: an eighth of the
    target's (SmolLM2's 30 -> 4), at least one. The embedding and lm_head stay whole, so on small
    models they are most of what a draft step reads."""
    return max(1, round(spec.num_layers / 8))


def plan_student(
    spec: ModelSpec,
    layers: int | None = None,
    keep_layers: Sequence[int] | None = None,
    mlp_ratio: float = 1.0,
) -> StudentPlan:
    """`layers`: that many layers spread evenly (first and last kept); `keep_layers`: exactly those."""
    total = spec.num_layers
    if layers is not None and keep_layers is not None:
        raise EdgekitError("give the student's layers once: --layers N or --keep-layers i,j,…")
    if keep_layers is not None:
        keep = list(keep_layers)
        bad = [i for i in keep if not 0 <= i < total]
        if bad:
            raise EdgekitError(f"--keep-layers {bad[0]} is out of range: the teacher has layers 0-{total - 1}")
        if len(set(keep)) != len(keep) or keep != sorted(keep):
            raise EdgekitError("--keep-layers must be distinct layer indices in increasing order")
    else:
        count = total if layers is None else layers
        if not 1 <= count <= total:
            raise EdgekitError(f"a student of {count} layers cannot come from a teacher of {total}; pick 1 to {total}")
        keep = np.linspace(0, total - 1, count).round().astype(int).tolist() if count > 1 else [0]
    if not 0 < mlp_ratio <= 1:
        raise EdgekitError(f"--mlp-ratio {mlp_ratio} must be in (0, 1]: a student is never wider than its teacher")
    inter = max(1, int(round(spec.intermediate_size * mlp_ratio)))
    if len(keep) == total and inter == spec.intermediate_size:
        raise EdgekitError("this student is the teacher itself; drop layers (--layers) or narrow the MLP (--mlp-ratio)")
    return StudentPlan(keep, inter)


def _mlp_channels(w: Mapping[str, np.ndarray], n: int, spec: ModelSpec, keep: int) -> np.ndarray:
    """The intermediate channels of layer n with the largest |gate row| * |up row| * |down column|."""
    lw = layer_weights(spec, n)
    gate_up = np.concatenate([np.asarray(w[name], dtype=np.float32) for name in lw.gate_up])
    gate, up = gate_up[: spec.intermediate_size], gate_up[spec.intermediate_size :]
    down = np.asarray(w[lw.down], dtype=np.float32)
    score = np.linalg.norm(gate, axis=1) * np.linalg.norm(up, axis=1) * np.linalg.norm(down, axis=0)
    return np.sort(np.argsort(-score)[:keep])


def _narrow(name: str, a: np.ndarray, channels: np.ndarray, spec: ModelSpec, n: int) -> np.ndarray:
    lw = layer_weights(spec, n)
    inter = spec.intermediate_size
    gate_up = (*lw.gate_up, *(bias_of(x) for x in lw.gate_up))
    if name in gate_up and spec.fused_gate_up:
        return np.concatenate([a[:inter][channels], a[inter:][channels]])
    if name in gate_up:
        return a[channels]
    if name == lw.down:
        return a[:, channels]
    return a


def student_weights(spec: ModelSpec, teacher: Mapping[str, np.ndarray], plan: StudentPlan) -> dict[str, np.ndarray]:
    """The student's tensors under HF names, float32."""
    out: dict[str, np.ndarray] = {}
    narrow = plan.intermediate_size < spec.intermediate_size
    for new, old in enumerate(plan.keep_layers):
        p = layer_prefix(old)
        channels = _mlp_channels(teacher, old, spec, plan.intermediate_size) if narrow else None
        for name in [n for n in teacher if n.startswith(p)]:
            a = np.array(teacher[name], dtype=np.float32)
            if channels is not None:
                a = _narrow(name, a, channels, spec, old)
            out[renumbered(name, new)] = a
    for name in teacher:
        if not LAYER_NAME.match(name):
            out[name] = np.array(teacher[name], dtype=np.float32)
    return out


def student_config(config: dict[str, Any], plan: StudentPlan) -> dict[str, Any]:
    """The teacher's HF config with the student's depth and width (and a record of both)."""
    student = dict(config)
    student["num_hidden_layers"] = len(plan.keep_layers)
    student["intermediate_size"] = plan.intermediate_size
    if isinstance(student.get("layer_types"), list):  # per-layer attention kinds follow their layers
        student["layer_types"] = [student["layer_types"][i] for i in plan.keep_layers]
    if isinstance(student.get("max_window_layers"), int):
        student["max_window_layers"] = min(student["max_window_layers"], len(plan.keep_layers))
    return student
