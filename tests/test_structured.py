"""Constrained decoding on tiny random models, on every backend this machine has: the answer matches
its JSON schema, regex, choices or grammar whenever it ends by itself, greedy and sampled, streamed
or not; a cut-off answer says "length"; bad constraints are one clear error; an unconstrained
request never imports llguidance."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

import edgekit
from edgekit.errors import EdgekitError
from edgekit.generation.constraints import ConstraintError

pytest.importorskip("llguidance")


class Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, or the answer may add keys
    sensor: Literal["kitchen", "garage", "attic"]
    celsius: int = Field(ge=-40, le=60)
    ok: bool
    note: str = Field(pattern=r"^[a-z ]{1,8}$")


SCHEMA = Reading.model_json_schema()
PROMPT = "Report the sensor reading:"
SAMPLED = {"temperature": 1.0, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1}


@pytest.fixture(scope="module", params=["onnx", "reference", "mlx"])
def engine(request, tiny_artifact, tiny_models, tmp_path_factory):
    if request.param == "onnx":
        return edgekit.load(tiny_artifact, profile=None)
    if request.param == "reference":
        return edgekit.load(tiny_models["llama"], profile=None, max_context=128)
    pytest.importorskip("mlx.core")
    from edgekit.quant.recipe import Recipe

    out = tmp_path_factory.mktemp("mlx") / "tiny-llama-mlx"
    recipe = Recipe(algorithm="rtn", group_size=32)
    edgekit.export(tiny_models["llama"], out, format="mlx", recipe=recipe, max_context=128)
    return edgekit.load(out, profile="mlx-cpu")


@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
def test_json_schema_answers_validate(engine, sampling):
    kw = {"max_new_tokens": 110, "json_schema": SCHEMA}
    if sampling == "sampled":
        kw |= SAMPLED
    for seed in range(3):
        done = engine.generate(PROMPT, seed=seed, **kw)
        assert done.finish_reason == "stop", done.text
        Reading.model_validate_json(done.text)
        assert done.text == json.dumps(json.loads(done.text))  # one line, json.dumps' separators
        if sampling == "greedy":
            break


def test_stream_and_generate_agree_under_a_constraint(engine):
    response_format = {"type": "json_schema", "json_schema": {"name": "reading", "schema": SCHEMA}}
    kw = {"max_new_tokens": 110, "seed": 5, "response_format": response_format}
    chunks = list(engine.stream(PROMPT, **SAMPLED, **kw))
    done = engine.generate(PROMPT, **SAMPLED, **kw)
    assert "".join(c.text for c in chunks) == done.text and chunks[-1].finish_reason == done.finish_reason == "stop"
    Reading.model_validate_json(done.text)


@pytest.mark.parametrize(
    ("option", "check"),
    [
        ({"regex": r"[a-z]{3}-\d{2,4}"}, lambda t: re.fullmatch(r"[a-z]{3}-\d{2,4}", t)),
        ({"choices": ["kitchen", "garage", "attic"]}, lambda t: t in ("kitchen", "garage", "attic")),
        ({"grammar": 'start: "temp=" NUM "C"\nNUM: /-?[0-9]{1,2}/'}, lambda t: re.fullmatch(r"temp=-?\d{1,2}C", t)),
        ({"grammar": 'root ::= "on" | "off" | "dim " [0-9]'}, lambda t: re.fullmatch(r"on|off|dim \d", t)),  # GBNF
    ],
)
def test_regex_choices_and_grammars_match(engine, option, check):
    for kw in ({}, {**SAMPLED, "seed": 3}):
        done = engine.generate(PROMPT, max_new_tokens=20, **option, **kw)
        assert done.finish_reason == "stop" and check(done.text), done.text


def test_json_object_parses_when_it_ends(engine):
    ended = 0
    for seed in range(4):
        kw = {"max_new_tokens": 100, "response_format": {"type": "json_object"}, "seed": seed}
        done = engine.generate(PROMPT, **kw, **SAMPLED)
        if done.finish_reason == "stop":
            ended += 1
            assert isinstance(json.loads(done.text), dict)
        else:
            assert done.finish_reason == "length"
    assert ended >= 1


def test_a_cut_off_answer_says_length(engine):
    done = engine.generate(PROMPT, max_new_tokens=4, json_schema=SCHEMA)
    assert done.finish_reason == "length" and len(done.token_ids) == 4
    with pytest.raises(ValueError):
        json.loads(done.text)


def test_constraints_keep_the_prompt_cache(engine):
    engine.reset()
    first = engine.generate(PROMPT, max_new_tokens=110, json_schema=SCHEMA)
    again = engine.generate(PROMPT, max_new_tokens=110, json_schema=SCHEMA)
    assert again.stats.cached_prompt_tokens == again.stats.prompt_tokens - 1
    assert again.token_ids == first.token_ids
    plain = engine.generate(PROMPT, max_new_tokens=8, ignore_eos=True)  # after a constrained call: unconstrained
    engine.reset()
    assert plain.token_ids == engine.generate(PROMPT, max_new_tokens=8, ignore_eos=True).token_ids


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"json_schema": {"type": "foo"}}, "JSON schema cannot be compiled: Invalid type: foo"),
        ({"json_schema": {"not": {"type": "string"}}}, 'JSON schema cannot be compiled: Unimplemented keys: ["not"]'),
        ({"regex": "(ab"}, "regex cannot be compiled"),
        ({"regex": "(?<=a)b"}, "look-around"),
        ({"grammar": 'root ::= "yes | "no"'}, "grammar: Failed to convert the grammar from GBNF"),
        ({"grammar": "start: missing_rule"}, "grammar cannot be compiled"),
        ({"regex": "a", "choices": ["a"]}, "pass one constraint, not regex and choices"),
        ({"response_format": {"type": "xml"}}, "response_format type must be"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}, "response_format json_schema"),
        ({"choices": []}, "choices must be a non-empty list"),
        ({"json_schema": "{}"}, "json_schema must be a JSON schema"),
    ],
)
def test_bad_constraints_are_one_line_errors(engine, options, needle):
    with pytest.raises(ConstraintError) as err:
        engine.generate(PROMPT, max_new_tokens=4, **options)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, EdgekitError)
    assert engine.generate(PROMPT, max_new_tokens=2).finish_reason in ("stop", "length")  # still usable


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_unconstrained_requests_never_import_llguidance(tiny_artifact):
    run = _run(
        "import sys, edgekit\n"
        f"e = edgekit.load({str(tiny_artifact)!r}, profile=None)\n"
        "e.generate('Hello', max_new_tokens=4); e.chat('Hi', max_new_tokens=4)\n"
        "assert 'llguidance' not in sys.modules, 'imported'\n"
    )
    assert run.returncode == 0, run.stderr


def test_without_llguidance_a_constraint_names_the_extra(tiny_artifact):
    run = _run(
        "import sys; sys.modules['llguidance'] = None\n"  # as if it were not installed
        "import edgekit\n"
        f"e = edgekit.load({str(tiny_artifact)!r}, profile=None)\n"
        "try:\n    e.generate('Hello', max_new_tokens=4, regex='[ab]+')\n"
        "except edgekit.MissingDependencyError as exc:\n    print(exc)\n"
    )
    assert run.returncode == 0, run.stderr
    assert "pip install 'edgekit[structured]'" in run.stdout and len(run.stdout.strip().splitlines()) == 1
