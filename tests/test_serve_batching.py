"""`edgekit serve` with continuous batching, through the official openai client: concurrent
streams with their own settings, a stream cancelled in the middle, a request arriving while
others decode, the waiting line past the seats, the prefix cache's cached_tokens, a request that
cannot fit, and the 413 of an over-limit body read by http.client."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from helpers import start_seated

import edgekit
from edgekit.serve import start
from edgekit.serve.server import MAX_BODY_BYTES

openai = pytest.importorskip("openai")

CONTEXT = 2048
SLOTS = 3


class Logged:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from edgekit.quant.recipe import Recipe
    from edgekit.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve-batching")
    source = write_tiny_checkpoint(root / "tiny-llama", "llama", max_position_embeddings=CONTEXT)
    out = root / "tiny-llama-2k"
    # float32 compute: the int8 kernels round a row differently with other rows beside it, and
    # the tests compare batched answers token for token with one-at-a-time ones
    edgekit.export(source, out, recipe=Recipe(algorithm="rtn"), max_context=CONTEXT, accuracy_level=0)
    return out


@pytest.fixture(scope="module")
def plain(artifact):
    return edgekit.load(artifact, profile=None)


def _serve(artifact, max_waiting: int = 8, **load):
    log = Logged()
    server, thread = start("127.0.0.1", 0, max_waiting=max_waiting, log=log)
    server.set_engine(edgekit.load(artifact, profile=None, **{"parallel": SLOTS, **load}))
    server.logged = log
    return server, thread


@pytest.fixture(scope="module")
def server(artifact):
    srv, thread = _serve(artifact)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)
    srv.engine.close()


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _wait(condition, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


QUESTIONS = ["What is the capital of France?", "Tell me a story.", "Count to five.", "Why is the sky blue?"]
SETTINGS = [
    {"max_tokens": 24},
    {"max_tokens": 20, "temperature": 0.8, "top_p": 0.9, "seed": 5},
    {"max_tokens": 30, "stop": ["e"]},
    {"max_tokens": 16, "temperature": 1.1, "seed": 11, "frequency_penalty": 0.5},
]


def test_concurrent_streams_with_their_own_settings(server, plain, monkeypatch):
    """4 streams on 3 seats, each equal to its answer from the plain engine alone."""
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    names = {"max_tokens": "max_new_tokens", "frequency_penalty": "frequency_penalty"}
    expected = [
        plain.chat(m, **{names.get(k, k): v for k, v in s.items()}) for m, s in zip(messages, SETTINGS, strict=True)
    ]
    steps = server.engine.batcher.steps, server.engine.batcher.sequence_steps
    results: list = [None] * len(messages)

    def ask(i: int) -> None:
        stream = _client(server).chat.completions.create(
            model=server.model_id, messages=messages[i], stream=True, **SETTINGS[i]
        )
        text, finish = [], None
        for chunk in stream:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish = choice.finish_reason or finish
        results[i] = ("".join(text), finish)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(messages))]
    start_seated(server.engine.batcher, threads, SLOTS, monkeypatch)
    for t in threads:
        t.join(60)
    assert results == [(e.text, e.finish_reason) for e in expected]
    runs = server.engine.batcher.steps - steps[0]
    assert server.engine.batcher.sequence_steps - steps[1] > runs  # runs stepped several streams


def test_a_request_arriving_while_others_decode_joins_them(server, plain):
    client = _client(server)
    long = client.completions.create(
        model="m", prompt="a", max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(long))
    assert first.choices[0].text is not None
    started = time.monotonic()
    short = client.completions.create(model="m", prompt="The quick brown fox", max_tokens=8)
    joined_after = time.monotonic() - started
    assert short.choices[0].text == plain.generate("The quick brown fox", max_new_tokens=8).text
    # the long stream is still running: the short one did not wait for it
    assert server.turnstile.running >= 1
    rest = "".join(c.choices[0].text for c in long)
    assert len(rest) > 0 and joined_after < 30


def test_a_stream_cancelled_mid_answer_stops_and_frees_its_seat(server, plain):
    client = _client(server)
    seen = len(server.logged.lines)
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=1800,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    other = threading.Thread(target=lambda: client.completions.create(model="m", prompt="Paris", max_tokens=40))
    other.start()
    for n, _ in enumerate(stream):
        if n == 5:
            break
    stream.close()
    _wait(lambda: any("client left" in line for line in server.logged.lines[seen:]))
    line = next(line for line in server.logged.lines[seen:] if "client left" in line)
    assert int(line.split("after ")[1].split()[0]) < 1800
    other.join(60)
    _wait(lambda: server.turnstile.running == 0)
    assert sorted(server.engine._free) == list(range(SLOTS))
    done = client.completions.create(model="m", prompt="The quick brown fox", max_tokens=8)
    assert done.choices[0].text == plain.generate("The quick brown fox", max_new_tokens=8).text


def test_the_next_turn_reports_cached_tokens(server):
    client = _client(server)
    history = [{"role": "system", "content": "You answer briefly. " * 8}, {"role": "user", "content": "Hello there"}]
    first = client.chat.completions.create(model="m", messages=history, max_tokens=12)
    history += [{"role": "assistant", "content": first.choices[0].message.content}]
    history += [{"role": "user", "content": "And then?"}]
    # another conversation in between takes the same seat
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Count to five."}], max_tokens=12)
    second = client.chat.completions.create(model="m", messages=history, max_tokens=12)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached + 32 < second.usage.prompt_tokens + 32 and cached % 32 == 0


def test_past_the_seats_the_line_waits_then_refuses(artifact):
    srv, thread = _serve(artifact, max_waiting=1)
    client = _client(srv)
    try:
        streams = [
            client.completions.create(
                model="m", prompt="a", max_tokens=1800, stream=True, extra_body={"ignore_eos": True}
            )
            for _ in range(SLOTS)
        ]
        for s in streams:
            next(iter(s))
        assert srv.turnstile.running == SLOTS
        waiting = threading.Thread(target=lambda: client.completions.create(model="m", prompt="b", max_tokens=2))
        waiting.start()
        _wait(lambda: srv.turnstile.waiting == 1)
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(model="m", prompt="c", max_tokens=2)
        assert refused.value.status_code == 503 and refused.value.body["code"] == "server_busy"
        streams[0].close()
        waiting.join(30)
        assert not waiting.is_alive()
        for s in streams[1:]:
            s.close()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        srv.engine.close()


def test_a_request_that_cannot_fit_a_seat_is_a_400(artifact):
    """A KV budget of 1 MB leaves each of 3 seats 256 positions (the tiny model's 2 KB a position)."""
    srv, thread = _serve(artifact, kv_cache_mb=1)
    try:
        assert srv.engine.max_context < CONTEXT
        with pytest.raises(openai.BadRequestError) as refused:
            _client(srv).completions.create(model="m", prompt="fox " * srv.engine.max_context, max_tokens=4)
        assert refused.value.body["code"] == "context_length_exceeded"
        assert _client(srv).completions.create(model="m", prompt="fox", max_tokens=4).usage.completion_tokens == 4
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
        srv.engine.close()


def test_an_over_limit_body_gets_its_413_read_by_http_client(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = b"x" * (MAX_BODY_BYTES + (2 << 20))  # 10 MB
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    assert response.status == 413 and "the limit is" in data["error"]["message"]


def test_a_graph_exported_before_batching_is_served_one_at_a_time(artifact, tmp_path):
    """Its model.onnx without the batch mark: load(parallel=) says to re-export; `edgekit serve`
    (parallel from the profile) serves it one request at a time and says why."""
    import shutil
    import subprocess
    import sys

    import onnx

    from edgekit.artifact import BATCH_METADATA, MANIFEST, MODEL_FILE, sha256
    from edgekit.runtimes.onnx_batch import SingleSequenceGraph

    old = tmp_path / "old"
    shutil.copytree(artifact, old)
    model = onnx.load(str(old / MODEL_FILE), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key != BATCH_METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    (old / MODEL_FILE).write_bytes(model.SerializeToString())
    manifest = json.loads((old / MANIFEST).read_text())
    manifest["files"][MODEL_FILE] = sha256(old / MODEL_FILE)
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SingleSequenceGraph, match="re-export it"):
        edgekit.load(old, profile=None, parallel=2)

    port = _free_port()
    command = [sys.executable, "-m", "edgekit", "serve", str(old), "--port", str(port), "--profile", "none"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: _health(port) == 200 or proc.poll() is not None, timeout=60)
        assert proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "one request at a time" in err and "re-export it" in err
    asked = subprocess.run(command + ["--parallel", "2"], capture_output=True, text=True, timeout=60)
    assert asked.returncode == 2 and "re-export it to decode several sequences at once" in asked.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _health(port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status
    except (urllib.error.URLError, OSError):
        return 0
