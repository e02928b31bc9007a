"""`edgekit serve` with OpenAI's response_format and tools, through the official openai client, on a
tiny model with a Qwen-style chat template: parse() into a pydantic model, a tool-call round trip,
tool calls in streamed deltas, and bad schemas or tools answered as 4xx while the server keeps serving."""

from __future__ import annotations

import http.client
import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field
from test_tools import QWEN_TEMPLATE, TOOLS, Sum, Weather, _tiny_with_template

import edgekit
from edgekit.serve import start

openai = pytest.importorskip("openai")
pytest.importorskip("llguidance")
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]


class Event(BaseModel):
    title: Literal["standup", "lunch", "review"]
    day: int = Field(ge=1, le=31)
    online: bool


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = _tiny_with_template(tmp_path_factory.mktemp("serve-tools") / "qwen-style", QWEN_TEMPLATE)
    srv, thread = start("127.0.0.1", 0, log=lambda line: None)
    srv.set_engine(edgekit.load(folder, profile=None, max_context=2048))
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _post(server, body: dict) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def test_parse_into_a_pydantic_model(client):
    for kw in ({}, {"temperature": 1.0, "seed": 3}):
        done = client.chat.completions.parse(
            model="m",
            messages=[{"role": "user", "content": "Next meeting?"}],
            response_format=Event,
            max_tokens=80,
            **kw,
        )
        message = done.choices[0].message
        assert done.choices[0].finish_reason == "stop" and isinstance(message.parsed, Event)
        assert Event.model_validate_json(message.content) == message.parsed


def test_json_object_and_a_cut_off_answer(client):
    done = client.chat.completions.create(
        model="m", messages=QUESTION, response_format={"type": "json_object"}, max_tokens=300, seed=1
    )
    if done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(done.choices[0].message.content), dict)
    schema = {"type": "json_schema", "json_schema": {"name": "event", "schema": Event.model_json_schema()}}
    cut = client.chat.completions.create(model="m", messages=QUESTION, response_format=schema, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="m", messages=QUESTION, response_format=Event, max_tokens=3)


def test_a_tool_call_round_trip(client):
    first = client.chat.completions.create(
        model="m", messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=120
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    {"weather": Weather, "add": Sum}[call.function.name].model_validate_json(call.function.arguments)
    messages = [
        *QUESTION,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "4 degrees, snow"},
    ]
    second = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8)
    assert second.choices[0].message.tool_calls is None and second.choices[0].finish_reason in ("stop", "length")
    alone = client.chat.completions.create(model="m", messages=QUESTION, max_tokens=1)  # "none": no tools shown
    assert second.usage.prompt_tokens > alone.usage.prompt_tokens + 20  # the call and its result went in


def test_tool_calls_in_streamed_deltas(client):
    choice = {"type": "function", "function": {"name": "add"}}
    stream = client.chat.completions.create(
        model="m", messages=QUESTION, tools=TOOLS, tool_choice=choice, max_tokens=120, stream=True
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        assert not delta.content
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = part.id or entry["id"]
            if part.function is not None:
                entry["name"] += part.function.name or ""
                entry["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "add" and calls[0]["id"]
    Sum.model_validate_json(calls[0]["arguments"])


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
            "response_format",
            "Invalid type: foo",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format", "response_format type must be"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
            "response_format",
            "Unimplemented keys",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "cannot be used together"),
    ],
)
def test_bad_schemas_and_tools_are_400s_and_the_server_keeps_serving(server, extra, param, needle):
    status, data = _post(server, {"model": "m", "messages": QUESTION, "max_tokens": 8, **extra})
    assert status == 400, data
    error = data["error"]
    assert needle in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    status, data = _post(server, {"model": "m", "messages": QUESTION, "max_tokens": 2})
    assert status == 200 and data["choices"][0]["message"]["content"] is not None
