"""The chat page served at `/`, in Debian's headless Chromium driven by Playwright: type a question,
see the answer stream in, the model name and tokens/s shown; Stop ends an answer; New forgets."""

from __future__ import annotations

import os
import shutil

import pytest

import edgekit
from edgekit.serve import start

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a machine with no route out: no background fetches, no sandbox (root in CI)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def served(tiny_artifact):
    engine = edgekit.load(tiny_artifact, profile=None)
    server, thread = start("127.0.0.1", 0, log=lambda line: None)
    server.set_engine(engine)
    yield server, edgekit.load(tiny_artifact, profile=None)
    server.shutdown()
    server.server_close()
    thread.join(5)


def _answers(page):
    return page.locator(".msg.assistant.done span")


def test_a_question_typed_in_the_page_streams_its_answer(browser, served):
    server, engine = served
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('context')")
    assert server.model_id in page.locator("#model").inner_text()

    page.locator("#input").fill("What is the capital of France?")
    page.locator("#input").press("Enter")
    _answers(page).first.wait_for(timeout=30_000)
    expected = engine.chat("What is the capital of France?").text
    assert _answers(page).first.text_content() == expected
    assert "tokens/s" in page.locator("#speed").inner_text()
    assert page.locator(".msg.user span").first.text_content() == "What is the capital of France?"

    # the second turn sends the conversation; the tiny model's first answer filled its context of
    # 128 tokens, so the page drops that exchange (greyed out) and asks the question alone
    page.locator("#input").fill("And of Spain?")
    page.locator("#send").click()
    _answers(page).nth(1).wait_for(timeout=30_000)
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": expected},
        {"role": "user", "content": "And of Spain?"},
    ]
    with pytest.raises(edgekit.EdgekitError, match="context"):
        engine.chat(history)
    assert _answers(page).nth(1).text_content() == engine.chat(history[2:]).text
    assert page.locator(".msg.dropped").count() == 2

    page.locator("#new").click()
    assert page.locator(".msg").count() == 0
    page.close()


def test_an_error_from_the_server_is_shown_in_the_page(browser, served):
    server, _ = served
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('context')")
    page.locator("#input").fill("word " * 600)  # over the tiny artifact's context
    page.locator("#input").press("Enter")
    page.locator(".msg.error").wait_for(timeout=30_000)
    assert "context" in page.locator(".msg.error").inner_text()
    page.close()
