from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_inspect_tiny(runner, tiny_models):
    result = runner.invoke(cli, ["inspect", str(tiny_models["qwen3"])])
    assert result.exit_code == 0, result.output
    assert "Qwen3ForCausalLM" in result.output and "head_dim" in result.output
    assert "chat template  yes" in " ".join(result.output.split("  ")) or "yes" in result.output


def test_inspect_json(runner, tiny_models):
    result = runner.invoke(cli, ["inspect", "--json", str(tiny_models["phi3"])])
    info = json.loads(result.output)
    assert info["spec"]["fused_qkv"] and info["tokenizer"]["vocab_size"] == 384 and info["chat_template"]


def test_run_tiny(runner, tiny_models):
    result = runner.invoke(cli, ["run", str(tiny_models["llama"]), "-p", "Hello", "-n", "5", "--raw"])
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output


@pytest.mark.parametrize("args", [["inspect", "/no/such/model"], ["run", "/no/such/model", "-p", "hi"]])
def test_bad_input_is_one_line_and_exit_2(runner, args):
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/no/such/model" in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(runner):
    result = runner.invoke(cli, ["--debug", "inspect", "/no/such/model"])
    assert result.exit_code != 0 and result.exception is not None


def test_prompt_longer_than_context(runner, tmp_path):
    from edgekit.testing import write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path / "m", "llama", max_position_embeddings=16)
    result = runner.invoke(cli, ["run", str(folder), "-p", "word " * 40, "--raw"])
    assert result.exit_code == 2
    assert "context is 16" in result.output
