"""edgekit: export decoder LLMs to small INT4 artifacts for edge devices, and run them."""

from .errors import EdgekitError, MissingDependencyError, SourceError, UnsupportedArchitectureError
from .generation import ChatTemplate, TextTokenizer
from .reference import KVCache, ReferenceModel
from .sources import Checkpoint, TokenizerFiles, open_checkpoint
from .spec import FAMILIES, ModelSpec, RopeSpec

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
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
    "TokenizerFiles",
    "UnsupportedArchitectureError",
    "open_checkpoint",
]
