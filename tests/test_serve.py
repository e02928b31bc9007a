"""`edgekit serve` on a tiny exported model: the official openai client, bad requests, clients
that leave, the waiting line, a bounded load test, and the chat page in headless Chromium."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import edgekit
from edgekit.serve import start
from edgekit.serve.server import Turnstile

CONTEXT = 8192  # a long answer takes seconds on the tiny model: time to leave in the middle
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Logged:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [line for line in self.lines if text in line]
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no log line with {text!r} in {self.lines}")


@pytest.fixture(scope="module")
def long_artifact(tmp_path_factory):
    """A tiny llama with room for answers long enough to leave in the middle of."""
    from edgekit.quant.recipe import Recipe
    from edgekit.testing import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve")
    source = write_tiny_checkpoint(root / "tiny-llama", "llama", max_position_embeddings=CONTEXT)
    out = root / "tiny-llama-8k"
    edgekit.export(source, out, recipe=Recipe(algorithm="rtn"), max_context=CONTEXT)
    return out


def _serve(artifact, **kw):
    log = Logged()
    server, thread = start("127.0.0.1", 0, log=log, **kw)
    server.set_engine(edgekit.load(artifact, profile=None, max_context=CONTEXT))
    server.logged = log
    return server, thread


@pytest.fixture(scope="module")
def server(long_artifact):
    srv, thread = _serve(long_artifact)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def engine(long_artifact):
    return edgekit.load(long_artifact, profile=None, max_context=CONTEXT)


def _post(server, path: str, body, timeout: float = 30.0) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    return response.status, data


def _get(server, path: str) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, json.loads(body) if response.getheader("Content-Type") == "application/json" else body


def _healthy(server) -> None:
    status, body = _get(server, "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = _post(server, "/v1/chat/completions", {"model": "m", "messages": QUESTION, "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


def test_openai_client_chat_non_streaming_and_streaming(server, engine):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    expected = engine.chat(QUESTION, max_new_tokens=12)

    done = client.chat.completions.create(model=server.model_id, messages=QUESTION, max_tokens=12)
    assert done.choices[0].message.content == expected.text
    assert done.choices[0].finish_reason == expected.finish_reason
    assert done.usage.prompt_tokens == expected.stats.prompt_tokens
    assert done.usage.completion_tokens == len(expected.token_ids)

    parts, usage = [], None
    stream = client.chat.completions.create(
        model=server.model_id,
        messages=QUESTION,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    assert "".join(parts) == expected.text
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    models = client.models.list()
    assert [m.id for m in models.data] == [server.model_id]


def test_text_completions_with_echo_stop_and_seed(server, engine):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    expected = engine.generate("Once upon a time", max_new_tokens=10)
    done = client.completions.create(model="any-name", prompt="Once upon a time", max_tokens=10, echo=True)
    assert done.choices[0].text == "Once upon a time" + expected.text
    assert done.model == server.model_id  # one model: the name a client sends is not checked

    sampled = [
        client.completions.create(model="m", prompt="Once", max_tokens=8, temperature=1.0, seed=5).choices[0].text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] == engine.generate("Once", max_new_tokens=8, temperature=1.0, seed=5).text

    stop = expected.text[3:6]
    if stop.strip():
        cut = client.completions.create(model="m", prompt="Once upon a time", max_tokens=10, stop=[stop])
        assert cut.choices[0].text == expected.text[: expected.text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": "m"}, 400, "missing required parameter: 'messages'"),
        ({"model": "m", "messages": "hi"}, 400, "invalid type for 'messages'"),
        ({"model": "m", "messages": QUESTION, "max_tokens": "12"}, 400, "invalid type for 'max_tokens'"),
        ({"model": "m", "messages": QUESTION, "temperature": True}, 400, "invalid type for 'temperature'"),
        ({"model": "m", "messages": QUESTION, "max_tokens": 10**9}, 400, "context"),
        ({"model": "m", "messages": QUESTION, "max_tokens": 0}, 400, "'max_tokens'"),
        ({"model": "m", "messages": QUESTION, "n": 2}, 400, "'n'"),
        ({"model": "m", "messages": QUESTION, "top_p": 0}, 400, "'top_p'"),
        ({"model": "m", "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "'stop'"),
        ({"model": "m", "messages": QUESTION, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"model": "m", "messages": QUESTION, "tools": [{"type": "function"}]}, 400, "tool"),
        ({"model": "m", "messages": QUESTION, "frobnicate": 1}, 400, "unrecognized request argument"),
        ({"model": "m", "messages": QUESTION, "speculation": "draft"}, 400, "speculation='draft' needs a draft model"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text parts"),
        ({"model": "m", "messages": [{"role": "user", "content": "word " * 9000}]}, 400, "context"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, body, status, needle):
    got, data = _post(server, "/v1/chat/completions", body)
    assert got == status
    error = data["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    _healthy(server)


def test_a_request_asks_for_speculative_decoding_and_gets_the_same_answer(server):
    body = {"model": "m", "prompt": list(range(3, 30)) * 3, "max_tokens": 24, "ignore_eos": True}
    status, plain = _post(server, "/v1/completions", body)
    assert status == 200 and plain["timings"]["proposed_tokens"] == 0
    status, fast = _post(server, "/v1/completions", {**body, "speculation": "lookup"})
    assert status == 200 and fast["choices"][0]["text"] == plain["choices"][0]["text"]
    assert fast["timings"]["proposed_tokens"] > 0


def test_prompt_over_the_context_is_a_context_length_error(server):
    status, data = _post(server, "/v1/completions", {"model": "m", "prompt": list(range(1, 40)) * 220})
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"


def test_unknown_routes_methods_and_missing_length(server):
    assert _get(server, "/v1/nothing")[0] == 404
    assert _post(server, "/v1/embeddings", {"input": "x"})[0] == 404
    assert _get(server, "/v1/models/" + server.model_id)[0] == 200
    assert _get(server, "/v1/models/gpt-4")[0] == 404
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 411 " in sock.recv(4096).split(b"\r\n")[0]
    _healthy(server)


def test_health_is_503_while_loading(long_artifact):
    srv, thread = start("127.0.0.1", 0, log=Logged())
    try:
        assert _get(srv, "/health") == (503, {"status": "loading"})
        status, data = _post(srv, "/v1/chat/completions", {"model": "m", "messages": QUESTION})
        assert status == 503 and data["error"]["code"] == "loading"
        srv.set_engine(edgekit.load(long_artifact, profile=None))
        _healthy(srv)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _start_stream(server, max_tokens: int = 8000) -> socket.socket:
    body = json.dumps(
        {"model": "m", "prompt": "a", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    ).encode()
    sock = socket.create_connection(server.server_address[:2], timeout=30)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def _read_until(sock: socket.socket, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        data = sock.recv(4096)
        assert data, f"the connection ended before {marker!r}: {seen!r}"
        seen += data


def _wait_idle(server) -> None:
    end = time.monotonic() + 10
    while server.turnstile.busy or server.turnstile.waiting:
        assert time.monotonic() < end, "the server stayed busy"
        time.sleep(0.01)


def test_a_client_that_leaves_mid_stream_stops_its_generation(server):
    _wait_idle(server)
    sock = _start_stream(server)
    _read_until(sock, b'"text":"')  # the answer has started
    sock.close()
    line = server.logged.wait_for("the client left after")
    made = int(line.split("after ")[1].split()[0])
    assert made < 8000
    _healthy(server)


def test_a_non_streaming_client_that_leaves_stops_too(server):
    body = json.dumps({"model": "m", "prompt": "a", "max_tokens": 8000, "ignore_eos": True}).encode()
    sock = socket.create_connection(server.server_address[:2], timeout=30)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    _wait_idle(server)
    before = len([x for x in server.logged.lines if "client left" in x])
    sock.sendall(head.encode() + body)
    end = time.monotonic() + 10
    while server.turnstile.waiting or not server.turnstile.busy:  # wait until it is generating
        assert time.monotonic() < end
        time.sleep(0.005)
    sock.close()
    while len([x for x in server.logged.lines if "client left" in x]) == before and time.monotonic() < end:
        time.sleep(0.02)
    left = [x for x in server.logged.lines if "client left" in x][before:]
    assert len(left) == 1 and "generation stopped" in left[0]
    assert int(left[0].split("after ")[1].split()[0]) < 8000
    _healthy(server)


def test_the_waiting_line_refuses_past_its_length_and_forgets_clients_that_leave(long_artifact):
    srv, thread = _serve(long_artifact, max_waiting=1)
    try:
        busy = _start_stream(srv)  # holds the engine for a while
        _read_until(busy, b'"text":"')
        waiting = _start_stream(srv, max_tokens=4)
        end = time.monotonic() + 5
        while srv.turnstile.waiting < 1 and time.monotonic() < end:
            time.sleep(0.01)
        assert srv.turnstile.waiting == 1
        status, data = _post(srv, "/v1/completions", {"model": "m", "prompt": "a", "max_tokens": 2})
        assert status == 503 and data["error"]["code"] == "server_busy"
        waiting.close()  # leaves the line before its turn
        end = time.monotonic() + 5
        while srv.turnstile.waiting and time.monotonic() < end:
            time.sleep(0.02)
        assert srv.turnstile.waiting == 0
        busy.close()
        _healthy(srv)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_turnstile_serves_in_arrival_order():
    line = Turnstile(max_waiting=10)
    order: list[int] = []
    gate = threading.Event()

    def first() -> None:
        with line.turn(gone=lambda: False):
            gate.wait(5)
            order.append(0)

    def later(i: int) -> None:
        with line.turn(gone=lambda: False):
            order.append(i)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    time.sleep(0.05)
    for i in range(1, 6):
        t = threading.Thread(target=later, args=(i,))
        t.start()
        threads.append(t)
        while line.waiting < i:
            time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4, 5]


def test_load_16_clients_200_requests(long_artifact):
    """Every request is answered (the waiting line holds all 16 clients), none lost or hung; the
    refusal past the line's length is tested above."""
    srv, thread = _serve(long_artifact, max_waiting=16)
    statuses: list[int] = []

    def one(i: int) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 16}
        if i % 2:
            body["stream"] = True
            host, port = srv.server_address[:2]
            conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            conn.close()
            assert response.status != 200 or data.rstrip().endswith(b"data: [DONE]")
            return response.status
        return _post(srv, "/v1/chat/completions", body, timeout=60)[0]

    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(200), timeout=300))
        assert len(statuses) == 200
        assert statuses == [200] * 200
        _healthy(srv)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_cli_serve_bad_artifact_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing"), "--port", "0"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: ")


def test_cli_serve_port_in_use_is_one_line_and_exit_2(server, long_artifact):
    from click.testing import CliRunner

    from edgekit.cli import cli

    port = server.server_address[1]
    result = CliRunner().invoke(cli, ["serve", str(long_artifact), "--port", str(port), "--profile", "none"])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_serving_imports_no_heavy_packages(tiny_artifact):
    """The runtime path, server included, on a Raspberry Pi install: no torch, transformers, onnx,
    optimum (nor the exporters' safetensors and gguf readers)."""
    import subprocess
    import sys

    code = (
        "import json, sys, urllib.request, edgekit\n"
        "from edgekit.serve import start\n"
        "server, thread = start('127.0.0.1', 0, log=lambda line: None)\n"
        f"server.set_engine(edgekit.load({str(tiny_artifact)!r}, parallel=2))\n"
        "body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 4})\n"
        "request = urllib.request.Request(server.url + '/v1/chat/completions', body.encode())\n"
        "assert json.load(urllib.request.urlopen(request))['usage']['completion_tokens'] >= 1\n"
        "server.shutdown()\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'optimum', 'safetensors', 'gguf') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
