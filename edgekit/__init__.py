"""edgekit: export decoder LLMs to small INT4 artifacts for edge devices, and run them."""

from importlib.metadata import PackageNotFoundError, version

from .artifact import ExportResult, Manifest
from .device_profiles import DeviceProfile, detect, load_profile
from .distill import DistillResult, distill
from .errors import EdgekitError, MissingDependencyError, SourceError, UnsupportedArchitectureError
from .exporters.pipeline import export
from .generation import (
    ChatTemplate,
    Chunk,
    Completion,
    ConstraintError,
    Engine,
    GenerationConfig,
    ParallelEngine,
    SamplingParams,
    Stats,
    TextTokenizer,
    ToolCall,
    ToolError,
    load,
)
from .generation.loader import load_runtime
from .quant import QuantizedModel, QuantizedTensor, Recipe, quantize_checkpoint
from .reference import KVCache, ReferenceModel
from .serve import serve
from .sources import Checkpoint, TokenizerFiles, open_checkpoint
from .spec import FAMILIES, ModelSpec, RopeSpec

try:
    __version__ = version("edgekit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Chunk",
    "Completion",
    "ConstraintError",
    "DeviceProfile",
    "Engine",
    "GenerationConfig",
    "ParallelEngine",
    "SamplingParams",
    "Stats",
    "detect",
    "distill",
    "DistillResult",
    "load",
    "serve",
    "load_profile",
    "FAMILIES",
    "ExportResult",
    "Manifest",
    "QuantizedModel",
    "QuantizedTensor",
    "Recipe",
    "export",
    "load_runtime",
    "quantize_checkpoint",
    "ChatTemplate",
    "Checkpoint",
    "EdgekitError",
    "KVCache",
    "MissingDependencyError",
    "ModelSpec",
    "ReferenceModel",
    "RopeSpec",
    "SourceError",
    "TextTokenizer",
    "ToolCall",
    "ToolError",
    "TokenizerFiles",
    "UnsupportedArchitectureError",
    "open_checkpoint",
]
