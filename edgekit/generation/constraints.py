"""Constrained decoding: a JSON schema, a regex, a list of choices or a grammar (Lark or GBNF) turned
into a token mask applied to the logits before sampling, with llguidance (the `structured` extra).

Nothing here imports llguidance until a request asks for a constraint, so unconstrained generation
neither needs the package nor pays for it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgekitError, require

EXTRA = "structured"
# JSON as json.dumps writes it, on one line: flexible whitespace lets a small model pad forever
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class ConstraintError(EdgekitError):
    """A schema, regex or grammar that cannot be compiled, or a constraint option used wrongly."""


@dataclass(frozen=True)
class Constraint:
    """What the answer must match, before compilation: `kind` is "json_schema", "regex", "choices",
    "grammar" (Lark or GBNF) or "lark"; `source` the schema (a dict), the pattern, the choices (a
    tuple) or the grammar text."""

    kind: str
    source: Any

    @property
    def description(self) -> str:
        return {"json_schema": "JSON schema", "regex": "regex", "choices": "choices"}.get(self.kind, "grammar")

    def grammar(self) -> str:
        """The llguidance grammar (its JSON form) for this constraint."""
        llguidance = require("llguidance", EXTRA)
        matcher = llguidance.LLMatcher
        if self.kind == "json_schema":
            return matcher.grammar_from_json_schema(json.dumps(self.source), defaults=JSON_STYLE)
        if self.kind == "regex":
            return matcher.grammar_from_regex(self.source)
        if self.kind == "choices":
            return matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in self.source))
        if self.kind == "lark":
            return matcher.grammar_from_lark(self.source)
        try:  # Lark, or llama.cpp's GBNF (converted to Lark)
            return llguidance.grammar_from("grammar", self.source)
        except ValueError as exc:
            raise ConstraintError(f"grammar: {_one_line(str(exc))}") from None


def constraint_from_options(
    response_format: dict[str, Any] | None = None,
    json_schema: dict[str, Any] | None = None,
    regex: str | None = None,
    choices: Sequence[str] | None = None,
    grammar: str | None = None,
) -> Constraint | None:
    """The one constraint a request asks for (at most one of the options), checked for shape only."""
    given = [
        name
        for name, value in (
            ("response_format", response_format),
            ("json_schema", json_schema),
            ("regex", regex),
            ("choices", choices),
            ("grammar", grammar),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConstraintError(f"pass one constraint, not {' and '.join(given)}")
    if response_format is not None:
        return _from_response_format(response_format)
    if json_schema is not None:
        if not isinstance(json_schema, dict):
            raise ConstraintError(f"json_schema must be a JSON schema (a dict), got {type(json_schema).__name__}")
        return Constraint("json_schema", json_schema)
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise ConstraintError("regex must be a non-empty string")
        return Constraint("regex", regex)
    if choices is not None:
        items = (choices,) if isinstance(choices, str) else tuple(choices)
        if not items or not all(isinstance(c, str) and c for c in items):
            raise ConstraintError("choices must be a non-empty list of non-empty strings")
        return Constraint("choices", items)
    if grammar is not None:
        if not isinstance(grammar, str) or not grammar.strip():
            raise ConstraintError("grammar must be the text of a Lark or GBNF grammar")
        return Constraint("grammar", grammar)
    return None


def _from_response_format(value: Any) -> Constraint | None:
    """OpenAI's response_format: {"type": "text"}, {"type": "json_object"} or
    {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}."""
    if not isinstance(value, dict):
        raise ConstraintError('response_format must be an object like {"type": "json_object"}')
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_schema", {"type": "object"})
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ConstraintError(
                'response_format json_schema must be {"name": ..., "schema": {...}, "strict": true|false}'
            )
        return Constraint("json_schema", spec.get("schema", {}))
    raise ConstraintError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines()]
    return "; ".join(line for line in lines if line and not set(line) <= set("^ |"))


class TokenMask:
    """One generation's position in the grammar: which tokens may come next, as a logits mask."""

    def __init__(self, matcher: Any, tokenizer: Any, vocab_size: int):
        self._matcher = matcher
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._words = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids next at -inf."""
        view = self._words[0]
        self._matcher.unsafe_compute_mask_ptr(view.ctypes.data, view.nbytes)
        allowed = np.unpackbits(self._words.view(np.uint8), bitorder="little")[: len(logits)].astype(bool)
        return np.where(allowed, logits, -np.inf).astype(logits.dtype, copy=False)

    def accept(self, token: int) -> bool:
        """Advance past a sampled token; False if the grammar does not allow it here."""
        return bool(self._matcher.consume_token(token))

    def accept_text(self, text: str) -> bool:
        """Advance past text the model wrote before the constraint started (its bytes, any tokenization)."""
        tokens = self._tokenizer.tokenize_str(text) if text else []
        return bool(self._matcher.consume_tokens(tokens)) if tokens else True

    @property
    def finished(self) -> bool:
        """Nothing but end-of-sequence can follow: the answer is complete."""
        return bool(self._matcher.is_stopped())

    @property
    def error(self) -> str:
        return _one_line(self._matcher.get_error())

    @property
    def accepting(self) -> bool:
        return bool(self._matcher.is_accepting())


class ConstraintCompiler:
    """Compiles constraints for one tokenizer. The tokenizer's llguidance form takes a fraction of a
    second to build (SmolLM2's 49k tokens: 0.2 s), so it is made once per set of end ids and kept."""

    def __init__(self, tokenizer_json: str, vocab_size: int):
        self._tokenizer_json = tokenizer_json
        self.vocab_size = vocab_size
        self._tokenizers: dict[tuple[int, ...], Any] = {}

    def _tokenizer(self, eos_ids: tuple[int, ...]) -> Any:
        if eos_ids not in self._tokenizers:
            llguidance = require("llguidance", EXTRA)
            self._tokenizers[eos_ids] = llguidance.LLTokenizer(
                self._tokenizer_json, n_vocab=self.vocab_size, eos_token=list(eos_ids)
            )
        return self._tokenizers[eos_ids]

    def compile(self, constraint: Constraint, eos_ids: Sequence[int]) -> TokenMask:
        """A fresh mask at the start of `constraint`; end-of-sequence ids are allowed where it is complete."""
        llguidance = require("llguidance", EXTRA)
        tokenizer = self._tokenizer(tuple(sorted(set(eos_ids))))
        try:
            grammar = constraint.grammar()
        except ValueError as exc:  # not valid JSON
            raise ConstraintError(f"{constraint.description}: {_one_line(str(exc))}") from None
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{constraint.description} cannot be compiled: {_one_line(matcher.get_error())}")
        return TokenMask(matcher, tokenizer, self.vocab_size)
