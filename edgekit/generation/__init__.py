"""Everything above a backend: tokenizer, chat templates, (later) sampling and the Engine."""

from .chat_template import ChatTemplate, ChatTemplateError
from .tokenizer import TextTokenizer

__all__ = ["ChatTemplate", "ChatTemplateError", "TextTokenizer"]
