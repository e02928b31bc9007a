"""Structured output and tool calls with a small model: a typed calendar event pulled out of free
text, then a tool-calling loop (a calculator and a clock).

    python examples/structured_output.py out/smollm2-135m-cpu

Needs the structured extra: pip install 'edgekit[structured]'.
"""

from __future__ import annotations

import ast
import json
import operator
import sys
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

import edgekit


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(max_length=30)
    date: str = Field(pattern=r"^2025-[01][0-9]-[0-3][0-9]$")
    start: str = Field(pattern=r"^[012][0-9]:[0-5][0-9]$")
    people: list[Annotated[str, Field(pattern=r"^[A-Z][a-z]{1,15}$")]] = Field(max_length=4)
    place: str = Field(max_length=30)
    kind: Literal["meeting", "meal", "call", "appointment", "other"]


EXTRACT = (
    "Extract the calendar event from the message as JSON with the keys title, date (YYYY-MM-DD), "
    "start (HH:MM, 24-hour), people, place and kind."
)
MESSAGES = [
    "Hi Sam, can we do lunch with Priya at Café Luna on 2025-03-14 at 12:30? Cheers, Alex",
    "Reminder: dentist appointment on 2025-06-02 at 09:15 at Main Street Dental.",
    "Team sync moved to 2025-11-20, 16:00, room B2 - Mia, Omar and Lena please join.",
]


def extract_events(engine: edgekit.Engine) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "event", "schema": Event.model_json_schema()}}
    for text in MESSAGES:
        messages = [{"role": "system", "content": EXTRACT}, {"role": "user", "content": text}]
        done = engine.chat(messages, response_format=schema, max_new_tokens=160)
        if done.finish_reason != "stop":
            print(f"{text}\n  -> cut off after {len(done.token_ids)} tokens\n")
            continue
        event = Event.model_validate_json(done.text)  # guaranteed to validate when the answer ended by itself
        print(f"{text}\n  -> {event!r}\n")


OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculate(expression: str) -> str:
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            return OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError(f"not arithmetic: {expression}")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError) as exc:
        return f"error: {exc}"


def clock(timezone: str = "local") -> str:
    return datetime.now().strftime("%H:%M on %A %d %B %Y") + f" ({timezone})"


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression with + - * / and parentheses.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "pattern": "^[0-9+*/(). -]{1,40}$"}},
                "required": ["expression"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "clock",
            "description": "The current date and time.",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "maxLength": 20}},
                "required": ["timezone"],
                "additionalProperties": False,
            },
        },
    },
]
RUN = {"calculator": lambda a: calculate(a["expression"]), "clock": lambda a: clock(a.get("timezone", "local"))}


def tool_loop(engine: edgekit.Engine, question: str) -> None:
    """Ask; run every call the model makes and hand the results back; stop at a plain answer."""
    messages = [{"role": "user", "content": question}]
    print(f"user: {question}")
    choice = "required"  # a 135M model rarely starts a call by itself: make the first turn one
    for _ in range(3):
        done = engine.chat(messages, tools=TOOLS, tool_choice=choice, max_new_tokens=60, stop=["\n\n"])
        if done.finish_reason != "tool_calls":
            print(f"assistant: {done.text.strip()}  [{done.finish_reason}]\n")
            return
        calls = [call.to_openai() for call in done.tool_calls]
        messages.append({"role": "assistant", "content": done.text, "tool_calls": calls})
        for call in done.tool_calls:
            result = RUN[call.name](json.loads(call.arguments))
            print(f"  call {call.name}({call.arguments}) -> {result}")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        choice = "none"
    print()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    engine = edgekit.load(sys.argv[1])
    extract_events(engine)
    tool_loop(engine, "What is 17 * 23 + 4?")
    tool_loop(engine, "What time is it?")


if __name__ == "__main__":
    main()
