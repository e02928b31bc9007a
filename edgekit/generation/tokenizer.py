"""The text side of a model: encode, decode, chat formatting and stop ids, from tokenizer files."""

from __future__ import annotations

from typing import Any

from ..errors import EdgekitError
from ..sources.checkpoint import TokenizerFiles
from .chat_template import ChatTemplate


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "__type": "AddedToken", ...}
        return value.get("content")
    return value


class TextTokenizer:
    def __init__(self, files: TokenizerFiles, eos_token_ids: tuple[int, ...] = ()):
        self.files = files
        self.backend = files.load()
        cfg = files.config
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        ids = list(eos_token_ids)
        eos_id = self.backend.token_to_id(self.eos_token) if self.eos_token else None
        if eos_id is not None and eos_id not in ids:
            ids.append(eos_id)
        self.eos_token_ids = tuple(ids)
        specials = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": _token_text(cfg.get("unk_token")),
            "pad_token": _token_text(cfg.get("pad_token")),
        }
        self.chat_template = ChatTemplate(files.chat_template, specials) if files.chat_template else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def special_id(self, text: str) -> int | None:
        """The id of the special token spelled `text`, if there is one (decoding skips these)."""
        token = self.backend.token_to_id(text)
        added = self.backend.get_added_tokens_decoder().get(token) if token is not None else None
        return token if added is not None and added.special else None

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Messages to token ids; `tools` reach the template as transformers passes them (None: not at all)."""
        if self.chat_template is None:
            raise EdgekitError("this model has no chat template; pass a plain prompt instead of chat messages")
        extra = {"tools": tools} if tools is not None else {}
        text = self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **extra)
        # The template writes bos itself where the model wants one, as transformers assumes.
        return self.encode(text, add_special_tokens=False)
