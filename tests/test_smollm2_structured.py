"""Structured output and tool calls on the real SmolLM2-135M-Instruct (ONNX, the shared export): a
calendar event that validates, greedy and sampled, streamed or not; a regex and choices; a tool
call through its generic format; the openai client's parse() and a tool round trip on the server."""

from __future__ import annotations

import json
import re
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

import edgekit
from edgekit.serve import start

pytestmark = pytest.mark.e2e
pytest.importorskip("llguidance")


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=30)
    date: str = Field(pattern=r"^2025-[01][0-9]-[0-3][0-9]$")
    people: list[Annotated[str, Field(pattern=r"^[A-Z][a-z]{1,15}$")]] = Field(max_length=4)
    kind: Literal["meeting", "meal", "call", "other"]


ASK = [
    {"role": "system", "content": "Extract the calendar event as JSON with title, date, people and kind."},
    {"role": "user", "content": "Lunch with Priya and Tom on 2025-03-14 at Café Luna."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "clock",
            "description": "The current time in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,20}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture(scope="module")
def engine(smollm2_onnx):
    return edgekit.load(smollm2_onnx)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.95, "top_k": 50, "seed": 1}])
def test_a_calendar_event_validates(engine, sampling):
    schema = Event.model_json_schema()
    done = engine.chat(ASK, json_schema=schema, max_new_tokens=160, **sampling)
    assert done.finish_reason == "stop", done.text
    event = Event.model_validate_json(done.text)
    assert event.date == "2025-03-14" or sampling  # greedy reads it from the message
    streamed = "".join(c.text for c in engine.stream(ASK, json_schema=schema, max_new_tokens=160, **sampling))
    assert streamed == done.text


def test_regex_and_choices(engine):
    question = [{"role": "user", "content": "On which date is Bastille Day 2025?"}]
    date = engine.chat(question, regex=r"2025-\d{2}-\d{2}", max_new_tokens=20)
    assert date.finish_reason == "stop" and re.fullmatch(r"2025-\d{2}-\d{2}", date.text)
    mood = [{"role": "user", "content": "Is 'I love this phone!' positive or negative?"}]
    assert engine.chat(mood, choices=["positive", "negative"], max_new_tokens=8).text == "positive"


def test_a_tool_call_in_the_generic_format(engine):
    assert engine.tool_request(TOOLS).format.name == "generic"
    question = [{"role": "user", "content": "What time is it in Paris?"}]
    done = engine.chat(question, tools=TOOLS, tool_choice="required", max_new_tokens=60)
    assert done.finish_reason == "tool_calls" and done.tool_calls[0].name == "clock"
    assert re.fullmatch(r"[A-Z][a-z]{1,20}", json.loads(done.tool_calls[0].arguments)["city"])


def test_the_openai_client_parses_and_calls_tools(engine):
    openai = pytest.importorskip("openai")
    server, thread = start("127.0.0.1", 0, log=lambda line: None)
    server.set_engine(engine)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        parsed = client.chat.completions.parse(model="smollm2", messages=ASK, response_format=Event, max_tokens=160)
        assert isinstance(parsed.choices[0].message.parsed, Event)
        question = [{"role": "user", "content": "What time is it in Paris?"}]
        first = client.chat.completions.create(
            model="smollm2", messages=question, tools=TOOLS, tool_choice="required", max_tokens=60
        )
        (call,) = first.choices[0].message.tool_calls
        messages = [
            *question,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "14:05"},
        ]
        answer = client.chat.completions.create(model="smollm2", messages=messages, tools=TOOLS, max_tokens=40)
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
