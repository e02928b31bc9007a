# ruff: noqa: E501  (chat templates are kept as their authors write them, one line per block)
"""Tool calls on tiny random models with chat templates of each call format: the template gets the
tools, a required call follows the tool's schema and comes back parsed with finish reason
"tool_calls", tool results go back in, and "auto" starts constraining once the model opens a call."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

import edgekit
from edgekit.generation.constraints import ConstraintCompiler
from edgekit.generation.tools import (
    FORMATS,
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    ToolCallGuide,
    ToolError,
    call_format,
    parse_calls,
    tool_request,
)
from edgekit.testing.tiny import CHATML_TEMPLATE, random_weights, tiny_config, tiny_tokenizer, write_checkpoint

pytest.importorskip("llguidance")

# The parts of Qwen2.5's, Mistral's and Llama 3.1's templates that matter here: tools rendered with
# tojson, earlier calls, tool results (Mistral's raises on call ids that are not 9 characters).
QWEN_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
You are provided with function signatures within <tools></tools> XML tags:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
For each function call, return a json object within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for tc in message.tool_calls %}<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

MISTRAL_TEMPLATE = """{%- for message in messages %}
{%- if message.role == 'user' %}{% if loop.last and tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[INST]{{ message.content }}[/INST]
{%- elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS][{% for tc in message.tool_calls %}
{%- if not (tc.id is defined and tc.id | length == 9) %}{{ raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{% endif %}
{{- {"name": tc.function.name, "arguments": tc.function.arguments, "id": tc.id} | tojson }}{% endfor %}]<|im_end|>
{%- elif message.role == 'tool' %}[TOOL_RESULTS]{"content": {{ message.content | tojson }}, "call_id": "{{ message.tool_call_id }}"}[/TOOL_RESULTS]
{%- else %}{{ message.content }}<|im_end|>{% endif %}
{%- endfor %}"""

LLAMA3_TEMPLATE = """{%- if tools %}<|im_start|>system
Given the following functions, respond with a JSON for a function call.
Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.
{% for t in tools %}{{ t | tojson(indent=4) }}
{% endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{{ {"name": message.tool_calls[0].function.name, "parameters": message.tool_calls[0].function.arguments} | tojson }}<|im_end|>
{% elif message.role in ('tool', 'ipython') %}<|im_start|>ipython
{{ message.content }}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TEMPLATES = {
    "hermes": QWEN_TEMPLATE,
    "mistral": MISTRAL_TEMPLATE,
    "llama3": LLAMA3_TEMPLATE,
    "generic": CHATML_TEMPLATE,
}


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Oslo", "Lima"]
    unit: Literal["C", "F"]


class Sum(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


TOOLS = [
    {
        "type": "function",
        "function": {"name": "weather", "description": "weather now", "parameters": Weather.model_json_schema()},
    },
    {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": Sum.model_json_schema()}},
]
ARGUMENTS = {"weather": Weather, "add": Sum}
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]


def _tiny_with_template(folder, template: str, special: tuple[str, ...] = ()):
    from tokenizers import AddedToken

    tok = tiny_tokenizer(384 - len(special))
    tok.add_special_tokens([AddedToken(s, special=True) for s in special])
    config = tiny_config("llama", max_position_embeddings=2048)
    write_checkpoint(folder, config, random_weights(config), tokenizer=tok)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "chat_template": template}))
    return folder


@pytest.fixture(scope="module", params=["hermes", "mistral", "llama3", "generic"])
def engine(request, tmp_path_factory):
    special = ("[TOOL_CALLS]",) if request.param == "mistral" else ()
    folder = _tiny_with_template(tmp_path_factory.mktemp("tools") / request.param, TEMPLATES[request.param], special)
    engine = edgekit.load(folder, profile=None, max_context=2048)
    assert engine.tool_request(TOOLS).format.name == request.param
    return engine


def test_the_format_table():
    assert [f.name for f in FORMATS] == ["hermes", "mistral", "llama3"]
    assert call_format(QWEN_TEMPLATE) is HERMES and call_format(MISTRAL_TEMPLATE) is MISTRAL
    assert call_format(LLAMA3_TEMPLATE) is LLAMA3 and call_format(CHATML_TEMPLATE) is GENERIC
    assert call_format(None) is GENERIC
    assert call_format("{# mentions <tool_call> but never reads a tool list #}") is GENERIC


def test_the_template_gets_the_tools(engine):
    text = engine.tokenizer.decode(engine.prompt_ids(QUESTION, tools=engine.tool_request(TOOLS)), False)
    assert '"name": "weather"' in text and '"name": "add"' in text and "What is the weather in Oslo?" in text
    plain = engine.tokenizer.decode(engine.prompt_ids(QUESTION, tools=engine.tool_request(TOOLS, "none")), False)
    assert '"weather"' not in plain


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_p": 0.95, "seed": 4}])
def test_a_required_call_follows_its_tools_schema(engine, sampling):
    done = engine.chat(QUESTION, tools=TOOLS, tool_choice="required", max_new_tokens=120, **sampling)
    assert done.finish_reason == "tool_calls", done.text
    (call,) = done.tool_calls
    ARGUMENTS[call.name].model_validate_json(call.arguments)
    assert call.to_openai()["type"] == "function" and call.id
    assert done.text == ""  # the call is not content


def test_a_named_tool_choice_calls_that_tool_and_streams_no_call_text(engine):
    choice = {"type": "function", "function": {"name": "add"}}
    chunks = list(engine.stream(QUESTION, tools=TOOLS, tool_choice=choice, max_new_tokens=120))
    assert "".join(c.text for c in chunks) == ""
    last = chunks[-1]
    assert last.finish_reason == "tool_calls" and [c.name for c in last.tool_calls] == ["add"]
    Sum.model_validate_json(last.tool_calls[0].arguments)


def test_a_cut_off_call_says_length_and_returns_no_call(engine):
    done = engine.chat(QUESTION, tools=TOOLS, tool_choice="required", max_new_tokens=4)
    assert done.finish_reason == "length" and done.tool_calls == []


def test_tool_results_go_back_in(engine):
    call = engine.chat(QUESTION, tools=TOOLS, tool_choice="required", max_new_tokens=120).tool_calls[0]
    conversation = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": "RESULT-4711"},
    ]
    rendered = engine.tokenizer.decode(engine.prompt_ids(conversation, tools=engine.tool_request(TOOLS)), False)
    assert "RESULT-4711" in rendered and call.name in rendered
    done = engine.chat(conversation, tools=TOOLS, tool_choice="none", max_new_tokens=6)
    assert done.tool_calls == [] and done.finish_reason in ("stop", "length")
    # the history alone (no tools for this turn) still renders
    assert engine.chat(conversation, max_new_tokens=2).tool_calls == []


def _drive(guide: ToolCallGuide, tokenizer, text: str) -> str:
    """Feed the model's own text token by token; return what a reader would see."""
    shown = ""
    ids: list[int] = []
    for token in tokenizer.encode(text, add_special_tokens=False):
        ids.append(token)
        assert guide.accept(token)
        shown += guide.visible(tokenizer.decode([token], skip_special_tokens=True))
    return shown


def _guide(engine, tools=TOOLS, choice="auto") -> ToolCallGuide:
    request = engine.tool_request(tools, choice)
    tok = engine.tokenizer
    compiler = ConstraintCompiler(tok.files.tokenizer_json, engine.vocab_size)
    fmt = request.format
    special = {m: i for m in (fmt.open, fmt.close) if m and (i := tok.special_id(m)) is not None}
    return ToolCallGuide(request, compiler, tok.eos_token_ids, lambda ids: tok.decode(ids, False), special)


def _finish_greedily(guide: ToolCallGuide, vocab: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(200):
        logits = guide.apply(rng.standard_normal(vocab).astype(np.float32))
        token = int(np.argmax(logits))
        if token in guide._eos_ids:
            return
        assert guide.accept(token)
        if guide.finished:
            return
    raise AssertionError("the call never finished")


def test_auto_constrains_a_call_once_the_model_opens_one(engine):
    guide = _guide(engine)
    opening = {"hermes": "Let me look. <tool_call>\n{", "generic": "Let me look. <tool_call>\n{", "llama3": " {"}
    if guide.format is MISTRAL:
        shown = _drive(guide, engine.tokenizer, "Let me look. ")
        assert guide.accept(engine.tokenizer.special_id("[TOOL_CALLS]"))
    else:
        shown = _drive(guide, engine.tokenizer, opening[guide.format.name])
    assert guide.state == "call"
    assert shown.strip() in ("Let me look.", "")
    free = np.zeros(engine.vocab_size, dtype=np.float32)
    allowed = np.isfinite(guide.apply(free)).sum()
    assert 0 < allowed < engine.vocab_size  # the grammar now decides
    _finish_greedily(guide, engine.vocab_size)
    calls, finish = guide.result("stop")
    assert finish == "tool_calls" and len(calls) == 1
    ARGUMENTS[calls[0].name].model_validate_json(calls[0].arguments)


def test_auto_leaves_plain_answers_alone(engine):
    guide = _guide(engine)
    shown = _drive(guide, engine.tokenizer, "It is sunny in Oslo today.")
    assert shown + guide.flush() == "It is sunny in Oslo today."
    logits = np.zeros(engine.vocab_size, dtype=np.float32)
    assert np.array_equal(guide.apply(logits), logits)
    assert guide.result("stop") == ([], "stop")


def test_parse_calls_of_each_format():
    args = '{"city": "Oslo", "unit": "C"}'
    cases = [
        (HERMES, f'Sure.<tool_call>\n{{"name": "weather", "arguments": {args}}}\n</tool_call>', "Sure."),
        (MISTRAL, f'[TOOL_CALLS][{{"name": "weather", "arguments": {args}}}]', ""),
        (LLAMA3, f' {{"name": "weather", "parameters": {args}}}', ""),
    ]
    for fmt, raw, content in cases:
        got_content, calls = parse_calls(fmt, raw)
        assert got_content == content and [(c.name, json.loads(c.arguments)) for c in calls] == [
            ("weather", json.loads(args))
        ]
    assert len(parse_calls(MISTRAL, "[TOOL_CALLS][]")[1]) == 0
    assert parse_calls(HERMES, "<tool_call>{not json</tool_call>") == ("<tool_call>{not json</tool_call>", [])
    assert len(parse_calls(MISTRAL, "x")[1]) == 0 and len(next(iter([parse_calls(MISTRAL, "[TOOL_CALLS]x")]))[1]) == 0
    two = '<tool_call>{"name": "a", "arguments": {}}</tool_call>\n<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert [c.name for c in parse_calls(HERMES, two)[1]] == ["a", "b"]
    assert len(parse_calls(MISTRAL, '[TOOL_CALLS][{"name": "w", "arguments": {}}]')[1][0].id) == 9


@pytest.mark.parametrize(
    ("tools", "choice", "needle"),
    [
        ([], "required", "tool_choice 'required' needs tools"),
        ("weather", None, "tools must be a non-empty list"),
        ([{"type": "function"}], None, "tools[0] must be"),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools[0].function.name"),
        ([TOOLS[0], TOOLS[0]], None, "two tools are named 'weather'"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "not one of the tools"),
        (TOOLS, "sometimes", "tool_choice must be"),
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None, "parameters must be"),
    ],
)
def test_bad_tools_are_one_line_errors(tools, choice, needle):
    with pytest.raises(ToolError) as err:
        tool_request(QWEN_TEMPLATE, tools, choice)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_tools_need_messages_and_exclude_constraints(engine):
    with pytest.raises(edgekit.EdgekitError, match="tools need a chat"):
        engine.generate("What is the weather?", tools=TOOLS)
    with pytest.raises(edgekit.EdgekitError, match="not both"):
        engine.chat(QUESTION, tools=TOOLS, regex="a+")
