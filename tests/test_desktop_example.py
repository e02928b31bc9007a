"""examples/desktop_chat.py driven the way a person drives it: a real X server (Xvfb), keys typed and
buttons clicked through xdotool, the Tk event loop pumped by the test until the answer is in."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import edgekit

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "desktop_chat.py"
MAX_NEW_TOKENS = 40
TOKENS_PER_S = re.compile(r"\d+\.\d tokens/s")


def skip_unless_ci(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this test must run; `make test` installs it as root)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def x_display():
    """An Xvfb server on a display number it picks itself (-displayfd), set as DISPLAY."""
    missing = [tool for tool in ("Xvfb", "xdotool") if shutil.which(tool) is None]
    if missing:
        skip_unless_ci(f"{' and '.join(missing)} not installed (Debian: apt-get install xvfb xdotool)")
    try:
        import tkinter  # noqa: F401
    except ImportError:
        skip_unless_ci("tkinter is not installed (Debian: apt-get install python3-tk)")
    read_end, write_end = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        number = reader.readline().strip()
    if not number:
        server.kill()
        pytest.fail(f"Xvfb did not start: {server.communicate()[1].decode(errors='replace')}")
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
    if previous is None:
        del os.environ["DISPLAY"]
    else:
        os.environ["DISPLAY"] = previous
    server.terminate()
    server.wait(timeout=10)


def load_example():
    spec = importlib.util.spec_from_file_location("desktop_chat", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xdotool(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=30)


def pump_until(root, condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        root.update()
        time.sleep(0.005)


@pytest.fixture
def chat_window(x_display, tiny_artifact):
    import tkinter as tk

    engine = edgekit.load(tiny_artifact, profile=None)
    root = tk.Tk()
    app = load_example().ChatApp(root, engine, max_new_tokens=MAX_NEW_TOKENS)
    pump_until(root, root.winfo_viewable, "the window to be mapped")
    # With no window manager to hand out the keyboard focus, the window takes it itself: focus set
    # from outside (`xdotool windowfocus`) reached only the first Tk window of a process, and only
    # with the pointer over it.
    app.entry.focus_force()
    pump_until(root, lambda: root.focus_get() is app.entry, "the entry to have the keyboard focus")
    yield app
    app.close()


def type_into_entry(app, question: str) -> None:
    xdotool("type", "--delay", "2", question)
    pump_until(app.root, lambda: app.entry.get() == question, f"the entry to read {question!r}")


def wait_for_answer(app, turns: int) -> None:
    pump_until(app.root, lambda: len(app.messages) == turns, "the answer to end")


def ask(app, question: str) -> None:
    type_into_entry(app, question)
    xdotool("key", "Return")
    wait_for_answer(app, len(app.messages) + 2)


def transcript(app) -> str:
    return app.transcript.get("1.0", "end-1c")


def click(widget) -> None:
    x = widget.winfo_rootx() + widget.winfo_width() // 2
    y = widget.winfo_rooty() + widget.winfo_height() // 2
    xdotool("mousemove", "--sync", str(x), str(y), "click", "1")


def greedy_answer(engine, messages) -> str:
    """What engine.chat answers from an empty KV cache (the path the window's turn takes)."""
    engine.reset()
    text = engine.chat(messages, max_new_tokens=MAX_NEW_TOKENS).text
    engine.reset()
    return text


def test_typed_question_is_answered_like_engine_chat(chat_window):
    app = chat_window
    question = "What is the capital of France?"
    expected = greedy_answer(app.engine, [{"role": "user", "content": question}])
    assert expected

    ask(app, question)

    assert app.messages == [{"role": "user", "content": question}, {"role": "assistant", "content": expected}]
    assert f"You: {question}\n" in transcript(app)
    assert expected in transcript(app)
    assert TOKENS_PER_S.search(app.status.get()), app.status.get()
    assert app.engine.name in app.status.get()

    ask(app, "And of Italy?")
    assert len(app.messages) == 4 and app.messages[-1]["content"] in transcript(app)
    assert app.last_stats.cached_prompt_tokens > 0  # the second turn reused the first one's KV cache


def test_stop_ends_the_answer_and_the_next_question_is_answered(chat_window, monkeypatch):
    app = chat_window
    question = "Tell me a story"
    full_answer = greedy_answer(app.engine, [{"role": "user", "content": question}])
    decode = app.engine.runtime.decode

    def slow_decode(token):
        time.sleep(0.05)  # so that the answer is still running when Stop is clicked
        return decode(token)

    monkeypatch.setattr(app.engine.runtime, "decode", slow_decode)
    type_into_entry(app, question)
    xdotool("key", "Return")
    pump_until(app.root, lambda: "".join(app.answer), "the first words of the answer")
    click(app.stop_button)
    wait_for_answer(app, 2)

    partial = app.messages[-1]["content"]
    assert partial and len(partial) < len(full_answer) and full_answer.startswith(partial)
    assert app.status.get().endswith("stopped")
    assert str(app.send_button.cget("state")) == "normal" and str(app.stop_button.cget("state")) == "disabled"

    monkeypatch.setattr(app.engine.runtime, "decode", decode)
    type_into_entry(app, "hello")  # the focus is back in the entry after the click on Stop
    click(app.send_button)
    wait_for_answer(app, 4)
    answer = app.messages[-1]["content"]
    assert answer == greedy_answer(app.engine, app.messages[:-1])
    assert transcript(app).endswith(f"You: hello\n{answer}\n\n")
    assert TOKENS_PER_S.search(app.status.get()), app.status.get()
