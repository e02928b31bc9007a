"""`edgekit run/chat --json-schema FILE | --grammar FILE | --regex R | --choice C` on a tiny artifact,
and bad constraint input as one line with exit code 2."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from edgekit.cli import cli

pytest.importorskip("llguidance")

SCHEMA = {
    "type": "object",
    "properties": {"room": {"enum": ["kitchen", "attic"]}, "lights": {"type": "boolean"}},
    "required": ["room", "lights"],
    "additionalProperties": False,
}


@pytest.fixture
def runner():
    return CliRunner()


def _answer(result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.split("\n")[0]


def test_run_with_a_json_schema_file(runner, tiny_artifact, tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    for extra in ([], ["-t", "0.9", "--seed", "2"]):
        line = _answer(
            runner.invoke(cli, ["run", str(tiny_artifact), "-p", "Lights?", "--json-schema", str(path), *extra])
        )
        value = json.loads(line)
        assert value["room"] in ("kitchen", "attic") and isinstance(value["lights"], bool)


def test_run_with_a_grammar_file_a_regex_and_choices(runner, tiny_artifact, tmp_path):
    grammar = tmp_path / "switch.gbnf"
    grammar.write_text('root ::= ("on" | "off") " " [0-9]')
    art = str(tiny_artifact)
    assert re.fullmatch(r"(on|off) \d", _answer(runner.invoke(cli, ["run", art, "-p", "x", "--grammar", str(grammar)])))
    assert re.fullmatch(r"\d{3}", _answer(runner.invoke(cli, ["run", art, "-p", "x", "--regex", r"\d{3}"])))
    choices = ["--choice", "yes", "--choice", "no"]
    assert _answer(runner.invoke(cli, ["run", art, "-p", "x", *choices])) in ("yes", "no")
    result = runner.invoke(cli, ["run", art, "-p", "x", "--regex", "[ab]{4}", "--json"])
    assert re.fullmatch("[ab]{4}", json.loads(result.stdout)["text"])


def test_chat_keeps_the_constraint_for_every_answer(runner, tiny_artifact):
    result = runner.invoke(cli, ["chat", str(tiny_artifact), "--choice", "yes", "--choice", "no"], input="one?\ntwo?\n")
    assert result.exit_code == 0, result.output
    answers = [line for line in result.stdout.splitlines() if line]
    assert len(answers) == 2 and all(a in ("yes", "no") for a in answers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--json-schema", "/no/schema.json"], "/no/schema.json: cannot read the JSON schema file"),
        (["--json-schema", "NOTJSON"], "not valid JSON"),
        (["--json-schema", "LIST"], "a JSON schema is an object"),
        (["--json-schema", "BADTYPE"], "JSON schema cannot be compiled: Invalid type: color"),
        (["--grammar", "BADGRAMMAR"], "grammar"),
        (["--regex", "(ab"], "regex cannot be compiled"),
        (["--regex", "a", "--choice", "b"], "pass one of --regex, --choice, not several"),
    ],
)
def test_bad_constraints_are_one_line_and_exit_2(runner, tiny_artifact, tmp_path, args, message):
    files = {"NOTJSON": "{nope", "LIST": "[1, 2]", "BADTYPE": '{"type": "color"}', "BADGRAMMAR": "root ::= ("}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    args = [str(tmp_path / a) if a in files else a for a in args]
    result = runner.invoke(cli, ["run", str(tiny_artifact), "-p", "hi", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
