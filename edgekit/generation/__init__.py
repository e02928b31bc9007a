"""Everything above a backend: tokenizer, chat templates, sampling, streaming text and the Engine."""

from .chat_template import ChatTemplate, ChatTemplateError
from .constraints import Constraint, ConstraintError
from .engine import Chunk, Completion, Engine, GenerationConfig, Stats
from .open_engine import load
from .parallel import ParallelEngine
from .sampling import Sampler, SamplingParams
from .tokenizer import TextTokenizer
from .tools import ToolCall, ToolError

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "Chunk",
    "Completion",
    "Constraint",
    "ConstraintError",
    "Engine",
    "GenerationConfig",
    "ParallelEngine",
    "Sampler",
    "SamplingParams",
    "Stats",
    "TextTokenizer",
    "ToolCall",
    "ToolError",
    "load",
]
