"""OpenAI's chat and text completion requests, read into what the Engine takes, and the response
objects written back. Everything a client can get wrong is an ApiError with OpenAI's error shape."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EdgekitError, MissingDependencyError
from ..generation.constraints import ConstraintError, constraint_from_options
from ..generation.engine import Stats
from ..generation.speculative import SPECULATION_MODES
from ..generation.tools import ToolCall, ToolError, tool_request

MAX_STOP_STRINGS = 4


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    @property
    def kind(self) -> str:
        return {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}.get(
            self.status, "server_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """One completion request: the prompt (chat messages, text or token ids) and how to answer."""

    endpoint: str  # "chat" or "text"
    prompt: Any
    options: dict[str, Any] = field(default_factory=dict)  # GenerationConfig fields
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    tools: dict[str, Any] = field(default_factory=dict)  # Engine.stream's tools, tool_choice, parallel_tool_calls


# (JSON types allowed, check of the value or None) per field
def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: low <= v <= high


_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
_OBJ = (dict,)
_COMMON: dict[str, tuple[tuple[type, ...], Callable[[Any], bool] | None, str]] = {
    "model": (_STR, None, ""),
    "max_tokens": (_INT, lambda v: v >= 1, ">= 1"),
    "temperature": (_NUM, _number(0, 2), "in [0, 2]"),
    "top_p": (_NUM, lambda v: 0 < v <= 1, "in (0, 1]"),
    "n": (_INT, lambda v: v == 1, "1 (one answer per request)"),
    "stream": (_BOOL, None, ""),
    "stream_options": (_OBJ, None, ""),
    "stop": ((str, list), None, ""),
    "seed": (_INT, None, ""),
    "presence_penalty": (_NUM, _number(-2, 2), "in [-2, 2]"),
    "frequency_penalty": (_NUM, _number(-2, 2), "in [-2, 2]"),
    "logit_bias": (_OBJ, lambda v: not v, "empty (not supported)"),
    "logprobs": ((bool, int), lambda v: not v, "false (not supported)"),
    "user": (_STR, None, ""),
    # beyond OpenAI, as llama.cpp's and vLLM's servers take them
    "top_k": (_INT, lambda v: v >= 0, ">= 0"),
    "min_p": (_NUM, lambda v: 0 <= v < 1, "in [0, 1)"),
    "repetition_penalty": (_NUM, lambda v: v > 0, "> 0"),
    "ignore_eos": (_BOOL, None, ""),
    "speculation": (_STR, lambda v: v in SPECULATION_MODES, f"one of {', '.join(SPECULATION_MODES)}"),
}
_CHAT = {
    **_COMMON,
    "messages": ((list,), lambda v: len(v) > 0, "a non-empty list"),
    "max_completion_tokens": _COMMON["max_tokens"],
    "top_logprobs": (_INT, lambda v: v == 0, "0 (not supported)"),
    "response_format": (_OBJ, None, ""),
    "tools": ((list,), None, ""),
    "tool_choice": ((str, dict), None, ""),
    "parallel_tool_calls": (_BOOL, None, ""),
    "store": (_BOOL, lambda v: not v, "false"),
    "metadata": (_OBJ, None, ""),
}
_TEXT = {
    **_COMMON,
    "prompt": ((str, list), None, ""),
    "echo": (_BOOL, None, ""),
    "best_of": (_INT, lambda v: v == 1, "1"),
    "suffix": ((str, type(None)), lambda v: not v, "empty (insertion is not supported)"),
}
_ROLES = ("system", "developer", "user", "assistant", "tool")
# request field -> GenerationConfig field
_OPTION_NAMES = {
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "ignore_eos": "ignore_eos",
    "speculation": "speculation",
}


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    return body


def _check_fields(body: dict[str, Any], schema: dict[str, Any], required: tuple[str, ...]) -> None:
    for name in required:
        if body.get(name) is None:
            raise ApiError(f"missing required parameter: '{name}'", param=name, code="missing_required_parameter")
    for name, value in body.items():
        if name not in schema:
            raise ApiError(f"unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
        if value is None:
            continue
        types, check, allowed = schema[name]
        if isinstance(value, bool) and bool not in types:
            ok_type = False  # JSON true is not a number here
        else:
            ok_type = isinstance(value, types)
        if not ok_type:
            wanted = " or ".join("number" if t is float else _JSON_NAMES.get(t, t.__name__) for t in types)
            raise ApiError(
                f"invalid type for '{name}': expected {wanted}, got {_json_type(value)}",
                param=name,
                code="invalid_type",
            )
        if check is not None and not check(value):
            raise ApiError(
                f"invalid value for '{name}': {value!r}; it must be {allowed}", param=name, code="invalid_value"
            )


_JSON_NAMES = {int: "integer", str: "string", bool: "boolean", dict: "object", list: "array", type(None): "null"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float):
        return "number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_STRINGS:
        raise ApiError(
            f"invalid value for 'stop': up to {MAX_STOP_STRINGS} non-empty strings", param="stop", code="invalid_value"
        )
    return tuple(stops)


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(
                    f"messages[{index}].content: only text parts are supported ({{'type': 'text', 'text': ...}})",
                    param=f"messages[{index}].content",
                    code="invalid_value",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(
        f"invalid type for 'messages[{index}].content': expected string or array, got {_json_type(content)}",
        param=f"messages[{index}].content",
        code="invalid_type",
    )


def _messages(value: list[Any]) -> list[dict[str, Any]]:
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ApiError(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise ApiError(
                f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {role!r}",
                param=f"messages[{i}].role",
                code="invalid_value",
            )
        entry: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _content(message, i)}
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                raise ApiError(f"messages[{i}].tool_calls must be a list of calls", param=f"messages[{i}].tool_calls")
            entry["tool_calls"] = calls
        if role == "tool":
            entry["tool_call_id"] = message.get("tool_call_id")
        messages.append(entry)
    return messages


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    """tools, tool_choice and parallel_tool_calls, checked; parallel calls only when asked for."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools and choice in (None, "none", "auto"):
        return {}
    try:
        tool_request(None, tools, choice)
    except ToolError as exc:
        raise ApiError(str(exc), param="tool_choice" if "tool_choice" in str(exc) else "tools") from None
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": bool(body.get("parallel_tool_calls"))}


def _response_format(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("response_format")
    try:
        if value is None or constraint_from_options(response_format=value) is None:
            return {}
    except ConstraintError as exc:
        raise ApiError(str(exc), param="response_format", code="invalid_value") from None
    if body.get("tools") and body.get("tool_choice") != "none":
        raise ApiError("response_format and tools cannot be used together", param="response_format")
    return {"response_format": value}


def _text_prompt(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return value
    if len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return list(value)
    raise ApiError(
        "'prompt' must be a string, a list of one string, or a list of token ids (one prompt per request)",
        param="prompt",
        code="invalid_value",
    )


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = {_OPTION_NAMES[k]: v for k, v in body.items() if k in _OPTION_NAMES and v is not None}
    if body.get("stop") is not None:
        options["stop"] = _stop(body["stop"])
    return options


def chat_request(body: dict[str, Any]) -> Request:
    _check_fields(body, _CHAT, ("messages",))
    options = _options(body) | _response_format(body)
    return Request("chat", _messages(body["messages"]), options, *_streaming(body), tools=_tools(body))


def text_request(body: dict[str, Any]) -> Request:
    _check_fields(body, _TEXT, ("prompt",))
    request = Request("text", _text_prompt(body["prompt"]), _options(body), *_streaming(body))
    request.echo = bool(body.get("echo"))
    return request


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = bool(body.get("stream"))
    options = body.get("stream_options") or {}
    usage = options.get("include_usage", False)
    if not isinstance(usage, bool):
        raise ApiError("invalid type for 'stream_options.include_usage': expected boolean", param="stream_options")
    if options and not stream:
        raise ApiError("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    return stream, usage


def engine_error(exc: EdgekitError) -> ApiError:
    """An error the engine raised about this request (a prompt over the context, a bad option, a
    schema that does not compile); a constraint this server cannot run is its own limit (501)."""
    message = str(exc)
    if isinstance(exc, MissingDependencyError):
        return ApiError(message, 501, param="response_format", code="not_supported")
    if isinstance(exc, ConstraintError | ToolError):
        return ApiError(message, param="tools" if isinstance(exc, ToolError) else "response_format")
    code = "context_length_exceeded" if "context" in message else "invalid_value"
    return ApiError(message, code=code)


class Answer:
    """The response objects of one request, in the endpoint's shape."""

    def __init__(self, request: Request, model: str):
        self.request = request
        self.model = model
        self.created = int(time.time())
        prefix = "chatcmpl" if request.endpoint == "chat" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.object = "chat.completion" if request.endpoint == "chat" else "text_completion"

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = self.object + (".chunk" if chunk and self.request.endpoint == "chat" else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(
        self, text: str, finish: str | None, delta: bool, role: bool = False, calls: list[ToolCall] | None = None
    ) -> dict[str, Any]:
        if self.request.endpoint == "text":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        if delta:
            message = ({"role": "assistant"} if role else {}) | ({"content": text} if text or role else {})
            return {"index": 0, "delta": message, "logprobs": None, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message = {"role": "assistant", "content": text or None, "tool_calls": [c.to_openai() for c in calls]}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}

    def full(
        self,
        text: str,
        finish: str,
        usage: dict[str, Any],
        timings: dict[str, float],
        calls: list[ToolCall] | None = None,
    ) -> dict[str, Any]:
        return {
            **self._envelope(False),
            "choices": [self._choice(text, finish, delta=False, calls=calls)],
            "usage": usage,
            "timings": timings,
        }

    def chunk(self, text: str, finish: str | None = None, first: bool = False) -> dict[str, Any]:
        return {**self._envelope(True), "choices": [self._choice(text, finish, delta=True, role=first)]}

    def tool_call_chunks(self, calls: list[ToolCall]) -> list[dict[str, Any]]:
        """As OpenAI streams a call: its id, type and name with empty arguments, then the arguments."""
        chunks = []
        for index, call in enumerate(calls):
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            body = {"index": index, "function": {"arguments": call.arguments}}
            for part in (head, body):
                choice = {"index": 0, "delta": {"tool_calls": [part]}, "logprobs": None, "finish_reason": None}
                chunks.append({**self._envelope(True), "choices": [choice]})
        return chunks

    def usage_chunk(self, usage: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
        return {**self._envelope(True), "choices": [], "usage": usage, "timings": timings}


def timings(stats: Stats) -> dict[str, float]:
    """Speed of one answer (beyond OpenAI's fields, as llama.cpp's server reports it)."""
    return {
        "prompt_tokens_per_s": round(stats.prompt_tokens_per_s, 2),
        "generation_tokens_per_s": round(stats.generation_tokens_per_s, 2),
        "time_to_first_token_ms": round(stats.time_to_first_token * 1000, 1),
        "cached_prompt_tokens": stats.cached_prompt_tokens,
        "proposed_tokens": stats.proposed_tokens,
        "accepted_tokens": stats.accepted_tokens,
    }


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
