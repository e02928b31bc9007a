"""Tool calls: which call format a chat template speaks, the prompt with the tools in it, the grammar
a call must follow, and the calls parsed back out of the answer.

Formats, chosen by a marker in the template's source (the first that matches):

| marker in the chat template | format | a call looks like |
|---|---|---|
| `<tool_call>` (Qwen2.5, Qwen3, Hermes) | hermes | `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` |
| `[TOOL_CALLS]` (Mistral) | mistral | `[TOOL_CALLS][{"name": ..., "arguments": {...}}]` |
| `"parameters": dictionary of argument name` (Llama 3.1-3.3) | llama3 | `{"name": ..., "parameters": {...}}` alone |
| anything else (SmolLM2, templates without tools) | generic | hermes' call, the tools listed in a system message |
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EdgekitError
from .constraints import JSON_STYLE, Constraint, ConstraintCompiler, TokenMask
from .text_stream import StopStrings

Message = dict[str, Any]


class ToolError(EdgekitError):
    """A tool definition, tool_choice or tool message that cannot be used."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object, as OpenAI's API gives it

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class CallFormat:
    name: str
    template_marker: str | None  # text in the chat template's source that selects this format
    open: str  # what starts a call; "" = the answer is the call, starting at its first "{"
    close: str  # what ends one ("" = the JSON's end)
    arguments_key: str
    array: bool  # the calls are one JSON array after `open`
    native: bool  # the template renders `tools` itself; otherwise a system message lists them
    short_ids: bool = False  # Mistral's template wants 9-character alphanumeric call ids


HERMES = CallFormat("hermes", "<tool_call>", "<tool_call>", "</tool_call>", "arguments", array=False, native=True)
MISTRAL = CallFormat(
    "mistral", "[TOOL_CALLS]", "[TOOL_CALLS]", "", "arguments", array=True, native=True, short_ids=True
)
LLAMA3 = CallFormat(
    "llama3", '"parameters": dictionary of argument name', "", "", "parameters", array=False, native=True
)
GENERIC = CallFormat("generic", None, "<tool_call>", "</tool_call>", "arguments", array=False, native=False)
FORMATS = (HERMES, MISTRAL, LLAMA3)


def call_format(template_source: str | None) -> CallFormat:
    """The call format a chat template speaks; GENERIC for one without tool support."""
    source = template_source or ""
    if "tools" in source:
        for fmt in FORMATS:
            if fmt.template_marker and fmt.template_marker in source:
                return fmt
    return GENERIC


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI's tool list: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]."""
    if not isinstance(tools, list | tuple) or not tools:
        raise ToolError("tools must be a non-empty list of {'type': 'function', 'function': {'name': ..., ...}}")
    names = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise ToolError(
                f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': {{}}}}}}"
            )
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ToolError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
        if name in names:
            raise ToolError(f"tools[{i}]: two tools are named {name!r}")
        names.add(name)
        if not isinstance(function.get("parameters", {}), dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
    return [dict(tool, type="function") for tool in tools]


def chosen_tools(tools: list[dict[str, Any]], tool_choice: Any) -> tuple[str, list[dict[str, Any]]]:
    """("auto" | "none" | "required", the tools a call may use) for OpenAI's tool_choice."""
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        return tool_choice or "auto", tools
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(name, str):
        raise ToolError(
            "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}"
        )
    named = [t for t in tools if t["function"]["name"] == name]
    if not named:
        raise ToolError(f"tool_choice names {name!r}, which is not one of the tools")
    return "required", named


def call_schema(fmt: CallFormat, tools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON schema of one call: the name of one of `tools` and that tool's arguments."""
    options = []
    for tool in tools:
        function = tool["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, fmt.arguments_key: parameters},
                "required": ["name", fmt.arguments_key],
                "additionalProperties": False,
            }
        )
    return options[0] if len(options) == 1 else {"anyOf": options}


def _literal(text: str, special_ids: dict[str, int]) -> str:
    """A Lark literal; a marker that is one special token is written as that token."""
    return f"<[{special_ids[text]}]>" if text in special_ids else json.dumps(text)


def call_grammar(
    fmt: CallFormat, tools: Sequence[dict[str, Any]], parallel: bool, with_open: bool, special_ids: dict[str, int]
) -> str:
    """Lark for the calls (llguidance's %json embeds the schema); without `open` when the model has
    already written it (tool_choice "auto")."""
    schema = json.dumps({**call_schema(fmt, tools), "x-guidance": JSON_STYLE})
    open_ = _literal(fmt.open, special_ids) if fmt.open else ""
    close = _literal(fmt.close, special_ids) if fmt.close else ""
    if fmt.array:
        calls = 'WS? "[" call ("," WS? call)* "]"' if parallel else 'WS? "[" call "]"'
        body = calls
    else:
        one = f"WS? call WS? {close}" if close else "WS? call"
        more = f" (WS? {open_} {one})*" if parallel and open_ else ""
        body = one + more
    start = f"{open_} {body}" if with_open and open_ else body
    return f"start: {start}\nWS: /[ \\t\\n]{{1,3}}/\ncall: %json {schema}\n"  # bounded: no endless padding


def _new_id(fmt: CallFormat) -> str:
    if fmt.short_ids:
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def parse_calls(fmt: CallFormat, raw: str) -> tuple[str, list[ToolCall]]:
    """(the text before the first call, the calls) from an answer decoded with its special tokens.
    An answer without a complete, valid call gives no calls."""
    decoder = json.JSONDecoder()
    if fmt.open:
        start = raw.find(fmt.open)
        if start < 0:
            return raw, []
        content, rest = raw[:start], raw[start:]
    else:
        stripped = raw.lstrip()
        if not stripped.startswith("{"):
            return raw, []
        content, rest = "", stripped
    objects: list[Any] = []
    try:
        if fmt.array:
            value, _ = decoder.raw_decode(rest[len(fmt.open) :].lstrip())
            objects = value if isinstance(value, list) else [value]
        elif not fmt.open:
            objects = [decoder.raw_decode(rest)[0]]
        else:
            pattern = re.escape(fmt.open) + r"\s*(.*?)\s*" + re.escape(fmt.close)
            objects = [json.loads(body) for body in re.findall(pattern, rest, flags=re.DOTALL)]
    except ValueError:
        return raw, []
    calls = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return raw, []
        arguments = obj.get(fmt.arguments_key, obj.get("arguments", {}))
        calls.append(ToolCall(_new_id(fmt), obj["name"], json.dumps(arguments, ensure_ascii=False)))
    return content.strip(), calls


def generic_system_prompt(tools: Sequence[dict[str, Any]]) -> str:
    listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You can call these tools:\n<tools>\n" + listed + "\n</tools>\n"
        'To call a tool, answer with <tool_call>{"name": <tool name>, "arguments": <arguments object>}</tool_call> '
        "and nothing else; the result comes back in <tool_response></tool_response>."
    )


def template_messages(fmt: CallFormat, messages: Sequence[Message], tools: Sequence[dict[str, Any]]) -> list[Message]:
    """The conversation as the chat template takes it. Native formats get the arguments of earlier
    calls as objects (transformers' convention); the generic one writes calls and results as text."""
    out: list[Message] = []
    for i, message in enumerate(messages):
        message = dict(message)
        calls = message.get("tool_calls")
        if calls:
            parsed = [_history_call(call, i) for call in calls]
            if fmt.native:
                message["tool_calls"] = [
                    {"id": c.get("id"), "type": "function", "function": {"name": n, "arguments": a}}
                    for c, (n, a) in zip(calls, parsed, strict=True)
                ]
            else:
                text = "".join(
                    f"<tool_call>{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}</tool_call>"
                    for n, a in parsed
                )
                message = {"role": "assistant", "content": ((message.get("content") or "") + text)}
        if message.get("content") is None:
            message["content"] = ""
        if message.get("role") == "tool" and not fmt.native:
            message = {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
        out.append(message)
    if not fmt.native and tools:
        prompt = generic_system_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _history_call(call: Any, index: int) -> tuple[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ToolError(f"messages[{index}].tool_calls: each call needs function.name and function.arguments")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            raise ToolError(f"messages[{index}].tool_calls: arguments of {function['name']!r} is not JSON") from None
    return function["name"], arguments


@dataclass(frozen=True)
class ToolRequest:
    """What one chat request asks of tools: the format, the tools shown to the model, whether a call
    is up to the model ("auto"), forbidden ("none") or required, and which tools a call may use."""

    format: CallFormat
    tools: list[dict[str, Any]]
    mode: str
    callable: list[dict[str, Any]]
    parallel: bool = False

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """`tools` for a template that renders them itself."""
        return self.tools if self.format.native and self.tools and self.mode != "none" else None

    def messages(self, messages: Sequence[Message]) -> list[Message]:
        return template_messages(self.format, messages, self.tools if self.mode != "none" else [])


def tool_request(
    template_source: str | None, tools: Any, tool_choice: Any = None, parallel: bool = False
) -> ToolRequest:
    fmt = call_format(template_source)
    if tools is None or (isinstance(tools, list | tuple) and not tools):
        if tool_choice not in (None, "none", "auto"):
            raise ToolError(f"tool_choice {tool_choice!r} needs tools")
        return ToolRequest(fmt, [], "none", [], parallel)
    checked = check_tools(tools)
    mode, allowed = chosen_tools(checked, tool_choice)
    return ToolRequest(fmt, checked, mode, allowed, bool(parallel))


class ToolCallGuide:
    """Drives one answer that may call tools. With tool_choice "required" the call's grammar holds
    from the first token; with "auto" the model writes freely until it starts a call (the format's
    opening marker, or a "{" opening a Llama 3 answer), then the rest of the call is constrained."""

    def __init__(
        self,
        request: ToolRequest,
        compiler: ConstraintCompiler,
        eos_ids: Sequence[int],
        decode_raw: Callable[[list[int]], str],
        special_ids: dict[str, int],
    ):
        self.format = fmt = request.format
        self._tools, self._parallel, self._special_ids = request.callable, request.parallel, special_ids
        self._compiler, self._eos_ids, self._decode_raw = compiler, eos_ids, decode_raw
        self._ids: list[int] = []
        self._mask: TokenMask | None = None
        self.state = "text"  # text -> call (constrained), or "free" once no call can start any more
        self._visible = StopStrings([fmt.open] if fmt.open else [])
        self._held = ""  # llama3: leading text held until its first character says call or not
        if request.mode == "required":
            self._start(with_open=True, written="")

    def _start(self, with_open: bool, written: str) -> None:
        grammar = call_grammar(self.format, self._tools, self._parallel, with_open, self._special_ids)
        self._mask = self._compiler.compile(Constraint("lark", grammar), self._eos_ids)
        self.state = "call"
        if not self._mask.accept_text(written):
            self._mask, self.state = None, "free"  # the model's own opening does not fit; leave it be

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return self._mask.apply(logits) if self._mask is not None else logits

    def accept(self, token: int) -> bool:
        self._ids.append(token)
        if self._mask is not None:
            return self._mask.accept(token)
        if self.state != "text":
            return True
        raw = self._decode_raw(self._ids)
        if not self.format.open:
            stripped = raw.lstrip()
            if stripped.startswith("{"):
                self._start(with_open=False, written=stripped)
            elif stripped:
                self.state = "free"
            return True
        at = raw.find(self.format.open)
        if at >= 0:
            self._start(with_open=False, written=raw[at + len(self.format.open) :])
        return True

    @property
    def finished(self) -> bool:
        return self._mask is not None and self._mask.finished

    @property
    def error(self) -> str:
        return self._mask.error if self._mask is not None else ""

    def visible(self, delta: str) -> str:
        """The part of new answer text a reader sees: none of a call."""
        if self.format.open:
            shown = self._visible.push(delta)
            return "" if self.state == "call" or self._visible.hit is not None else shown
        if self.state == "call":
            return ""
        self._held += delta
        if self.state == "text" and not self._held.strip():
            return ""
        shown, self._held = self._held, ""
        return shown

    def flush(self) -> str:
        if self.state == "call" or self._visible.hit is not None:
            return ""
        shown, self._held = self._held + self._visible.flush(), ""
        return shown

    def result(self, finish: str) -> tuple[list[ToolCall], str]:
        """The calls of the finished answer and its finish reason ("tool_calls" when it made any)."""
        if finish != "stop" or self.state != "call":
            return [], finish
        _, calls = parse_calls(self.format, self._decode_raw(self._ids))
        return (calls, "tool_calls") if calls else ([], finish)
