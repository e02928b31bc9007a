"""The engines the benchmark compares, by name (each module imports its engine only when used)."""

from __future__ import annotations

from .base import Engine, Session, Source
from .edgekit_engine import EdgekitEngine
from .genai import GenaiEngine
from .llamacpp import LlamaCppEngine
from .mlx_lm_engine import MlxLmEngine
from .optimum_engine import OptimumEngine
from .transformers_engine import TransformersEngine

ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        EdgekitEngine("onnx"),
        LlamaCppEngine(),
        GenaiEngine(),
        OptimumEngine(),
        TransformersEngine(),
        EdgekitEngine("mlx"),
        MlxLmEngine(),
    )
}

__all__ = ["ENGINES", "Engine", "Session", "Source"]
