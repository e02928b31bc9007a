"""The generation commands (run, chat, bench, devices) and export --profile, through click's runner,
as a real subprocess, and `edgekit chat` through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgekit.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_run_with_model_option_and_sampling(runner, tiny_artifact):
    args = ["run", "-m", str(tiny_artifact), "-p", "Hello", "-n", "6", "--ignore-eos", "-t", "0.8", "--seed", "3"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "generation: 6 tokens" in first.output and "tokens/s" in first.output and "first token" in first.output
    assert runner.invoke(cli, args).output.split("\n")[0] == first.output.split("\n")[0]


def test_run_json(runner, tiny_artifact):
    result = runner.invoke(cli, ["run", str(tiny_artifact), "-p", "Hi", "-n", "5", "--ignore-eos", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["finish_reason"] == "length" and len(data["token_ids"]) == 5
    assert data["usage"]["completion_tokens"] == 5 and data["stats"]["generation_tokens_per_s"] > 0


def test_run_reads_the_prompt_from_stdin(runner, tiny_artifact):
    result = runner.invoke(cli, ["run", str(tiny_artifact), "-p", "-", "-n", "3", "--raw"], input="Hello there")
    same = runner.invoke(cli, ["run", str(tiny_artifact), "-p", "Hello there", "-n", "3", "--raw"])
    assert result.exit_code == 0 and result.output.split(" tokens,")[0] == same.output.split(" tokens,")[0]


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "/no/such/artifact", "-p", "hi"], "/no/such/artifact"),
        (["run", "ART", "-p", "hi", "--profile", "toaster"], "no device profile named 'toaster'; shipped profiles:"),
        (["bench", "ART", "--profile", "toaster"], "no device profile named 'toaster'"),
        (["chat", "ART", "--profile", "nvidia-cuda"], "is a cpu artifact but profile nvidia-cuda runs cuda ones"),
        (["export", "SRC", "-o", "OUT", "--profile", "toaster"], "no device profile named 'toaster'"),
        (["run", "ART", "-p", "hi", "--max-context", "4096"], "longer than the artifact's 128"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, tiny_artifact, tiny_models, tmp_path, args, message):
    args = [
        {"ART": str(tiny_artifact), "SRC": str(tiny_models["llama"]), "OUT": str(tmp_path / "o")}.get(a, a)
        for a in args
    ]
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_unknown_artifact_format_version(runner, tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "art"
    shutil.copytree(tiny_artifact, copy)
    manifest = json.loads((copy / "edgekit.json").read_text())
    (copy / "edgekit.json").write_text(json.dumps({**manifest, "format_version": 99}))
    result = runner.invoke(cli, ["run", str(copy), "-p", "hi"])
    assert result.exit_code == 2 and "artifact format version 99 is not supported" in result.output


def test_model_given_twice_or_never(runner, tiny_artifact):
    assert runner.invoke(cli, ["run", "-p", "hi"]).exit_code == 2
    both = runner.invoke(cli, ["run", str(tiny_artifact), "-m", str(tiny_artifact), "-p", "hi"])
    assert both.exit_code == 2 and "give the model once" in both.output


def test_bench_table_and_json(runner, tiny_artifact):
    table = runner.invoke(cli, ["bench", str(tiny_artifact), "-p", "32", "-n", "8", "-r", "2"])
    assert table.exit_code == 0, table.output
    assert "| pp32 |" in table.output and "| tg8 |" in table.output and "±" in table.output
    result = runner.invoke(cli, ["bench", str(tiny_artifact), "-p", "16", "-n", "4", "-r", "3", "-o", "json"])
    rows = json.loads(result.output)
    assert [r["test"] for r in rows] == ["pp16", "tg4"] and all(len(r["tokens_per_s"]) == 3 for r in rows)
    too_long = runner.invoke(cli, ["bench", str(tiny_artifact), "-p", "200", "-n", "8"])
    assert too_long.exit_code == 2 and "context" in too_long.output


def test_devices(runner):
    result = runner.invoke(cli, ["devices"])
    assert result.exit_code == 0 and "this machine:" in result.output and "raspberry-pi-5" in result.output
    assert sum(line.startswith("*") for line in result.output.splitlines()) == 1
    data = json.loads(runner.invoke(cli, ["devices", "--json"]).output)
    assert sum(p["selected"] for p in data["profiles"]) == 1 and len(data["profiles"]) >= 8


def test_export_with_a_profile_records_it(runner, tiny_models, tmp_path):
    out = tmp_path / "pi5"
    result = runner.invoke(
        cli, ["export", str(tiny_models["llama"]), "-o", str(out), "--profile", "raspberry-pi-5", "-a", "rtn"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["profile"] == "raspberry-pi-5" and manifest["flavor"] == "cpu"
    assert manifest["max_context"] == 512  # the profile's 4096, capped by the tiny model's 512
    assert manifest["quantization"]["recipe"]["algorithm"] == "rtn"  # the flag overrides the profile
    assert manifest["quantization"]["recipe"]["lm_head_bits"] == 8


def test_run_as_a_real_subprocess(tiny_artifact):
    out = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", str(tiny_artifact), "-p", "Hello", "-n", "4", "--ignore-eos"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "generation: 4 tokens" in out.stderr and out.stdout.strip()
    bad = subprocess.run(
        [sys.executable, "-m", "edgekit", "run", "/no/such", "-p", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


class Terminal:
    """A child process on a pseudo-terminal, read until some text appears."""

    def __init__(self, args: list[str]):
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            # a runner started in the background ignores SIGINT, and exec would pass that on
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(sys.executable, [sys.executable, *args])
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while text not in self.seen:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} in {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    raise AssertionError(f"no {text!r} in {self.seen!r} (terminal closed)") from None
        head, _, self.seen = self.seen.partition(text)
        return head

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_chat_through_a_pseudo_terminal(tiny_artifact):
    term = Terminal(["-m", "edgekit", "chat", str(tiny_artifact), "-n", "8", "--ignore-eos"])
    term.expect("/reset")  # the help line
    term.expect(">>> ")
    term.send("Hello there\r")
    term.expect("generation: 8 tokens")
    term.expect(">>> ")
    term.send("And now?\r")
    answer = term.expect("tokens/s")
    assert "prompt:" in answer
    term.expect(">>> ")
    term.send("/reset\r")
    term.expect("(conversation reset)")
    term.send("/exit\r")
    assert term.wait() == 0


def test_ctrl_c_stops_the_answer_not_the_chat(tiny_models, tmp_path):
    from edgekit.testing import write_tiny_checkpoint

    slow = write_tiny_checkpoint(tmp_path / "long", "llama", max_position_embeddings=100000)
    # the numpy reference on the source: slow enough to interrupt mid-answer
    term = Terminal(["-m", "edgekit", "chat", str(slow), "-n", "50000", "--ignore-eos", "--profile", "none"])
    term.expect(">>> ")
    term.send("Hello\r")
    time.sleep(3)
    term.send("\x03")
    term.expect("(stopped)")
    term.expect(">>> ")
    term.send("\x04")
    assert term.wait() == 0
