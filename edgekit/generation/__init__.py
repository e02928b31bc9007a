"""Everything above a backend: tokenizer, chat templates, sampling, streaming text and the Engine."""

from .chat_template import ChatTemplate, ChatTemplateError
from .engine import Chunk, Completion, Engine, GenerationConfig, Stats, load
from .sampling import Sampler, SamplingParams
from .tokenizer import TextTokenizer

__all__ = [
    "ChatTemplate",
    "ChatTemplateError",
    "Chunk",
    "Completion",
    "Engine",
    "GenerationConfig",
    "Sampler",
    "SamplingParams",
    "Stats",
    "TextTokenizer",
    "load",
]
