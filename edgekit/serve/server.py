"""An OpenAI-compatible HTTP server on the standard library: one loaded model, up to `parallel`
requests generating at once (continuous batching, when the engine is a ParallelEngine), more
waiting in arrival order, each streaming or not; a chat page at `/`.

Threads: one per connection (ThreadingHTTPServer). A request is parsed and its prompt tokenized
and checked in its own thread, then it waits for a seat at the engine (first come, first served;
past `max_waiting` waiting requests the server answers 503 at once). While it waits or generates,
a client that goes away is noticed (its socket reads end-of-file) and its request leaves the queue
or stops generating."""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import EdgekitError
from ..generation.engine import Chunk, Engine, Stats
from ..runtimes.onnx_batch import SingleSequenceGraph
from .protocol import Answer, ApiError, Request, chat_request, engine_error, parse_json, sse, text_request, timings

MAX_BODY_BYTES = 8 << 20
# a body over the limit is read and dropped after the 413 (this much, this long at most), so that a
# client that sends its whole body before reading the answer reads the 413 instead of a reset
DISCARD_BYTES = 64 << 20
DISCARD_S = 10.0
IDLE_TIMEOUT_S = 120  # a keep-alive connection with no request, or a client that stops reading


class ClientGone(Exception):
    """The client closed its connection; its request is dropped."""


class Turnstile:
    """First come, first served access to the engine's `seats` (the sequences it generates at
    once), with a bounded waiting line."""

    def __init__(self, max_waiting: int, seats: int = 1):
        self.max_waiting = max_waiting
        self.seats = seats
        self._cond = threading.Condition()
        self._line: deque[object] = deque()
        self._taken = 0

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def running(self) -> int:
        return self._taken

    @property
    def busy(self) -> bool:
        return self._taken > 0

    @contextmanager
    def turn(self, gone: Callable[[], bool]) -> Iterator[None]:
        ticket = object()
        with self._cond:
            if len(self._line) >= self.max_waiting:
                raise ApiError(
                    f"the server is busy: {len(self._line)} requests are waiting; retry shortly",
                    status=503,
                    code="server_busy",
                )
            self._line.append(ticket)
            try:
                while self._taken >= self.seats or self._line[0] is not ticket:
                    self._cond.wait(0.25)
                    if gone():
                        raise ClientGone("while waiting for its turn")
            except BaseException:
                self._line.remove(ticket)
                self._cond.notify_all()
                raise
            self._line.popleft()
            self._taken += 1
            self._cond.notify_all()  # the next in line may have a seat too
        try:
            yield
        finally:
            with self._cond:
                self._taken -= 1
                self._cond.notify_all()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the listen backlog: the standard library's 5 resets bursts of clients

    def __init__(
        self,
        address: tuple[str, int],
        max_waiting: int = 32,
        log: Callable[[str], None] | None = None,
    ):
        try:
            super().__init__(address, Handler)
        except OSError as exc:
            host, port = address
            raise EdgekitError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port or --host"
            ) from None
        self.engine: Engine | None = None
        self.model_id = ""
        self.started = time.time()
        self.load_error: str | None = None
        self.turnstile = Turnstile(max_waiting)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that fails outside a handler (a client resetting it mid-request line)."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            self.log(f"connection from {client_address[0]}: {type(exc).__name__}: {exc}")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

    def set_engine(self, engine: Engine, model_id: str | None = None) -> None:
        """Attach the loaded model; clients see it as `model_id` (default: the model's name)."""
        self.model_id = model_id or engine.name
        self.turnstile.seats = getattr(engine, "slots", 1)  # a ParallelEngine's; a plain Engine has one
        self.engine = engine


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    timeout = IDLE_TIMEOUT_S

    # --- routing ---

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/":
            self._send(200, _page(), "text/html; charset=utf-8")
        elif path == "/health":
            self._health()
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [self._model_card()] if self.server.engine else []})
        elif path.startswith("/v1/models/"):
            if self.server.engine is None or path[len("/v1/models/") :] != self.server.model_id:
                self._error(ApiError(f"no model {path[len('/v1/models/') :]!r} here", 404, code="model_not_found"))
            else:
                self._json(200, self._model_card())
        else:
            self._error(ApiError(f"no route GET {path}", 404, code="not_found"))

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {"/v1/chat/completions": chat_request, "/v1/completions": text_request}
        try:
            body = self._read_body()  # read even for a bad route: the connection stays usable
            if path not in routes:
                raise ApiError(f"no route POST {path}", 404, code="not_found")
            if self.server.engine is None:
                raise ApiError("the model is still loading; retry shortly (GET /health says when)", 503, code="loading")
            self._complete(routes[path](parse_json(body)))
        except ApiError as exc:
            self._error(exc)
            if exc.status == 413:
                self._discard_body()
        except ClientGone as exc:
            self.close_connection = True
            self.server.log(f"{self.command} {self.path}: the client left {exc}")
        except Exception as exc:  # a bug or a runtime failure: answer it and keep serving
            self.close_connection = True
            self._error(ApiError(f"internal error: {type(exc).__name__}: {exc}", 500, code="internal_error"))

    def do_OPTIONS(self) -> None:  # noqa: N802 (CORS preflight)
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Content-Type, Authorization")
        self.send_header("Access-Control-Max-Age", "86400")
        self._common_headers(0)
        self.end_headers()

    def _health(self) -> None:
        srv = self.server
        if srv.engine is not None:
            self._json(
                200,
                {
                    "status": "ok",
                    "model": srv.model_id,
                    "busy": srv.turnstile.busy,
                    "running": srv.turnstile.running,
                    "parallel": srv.turnstile.seats,
                    "waiting": srv.turnstile.waiting,
                },
            )
        elif srv.load_error is not None:
            self._json(503, {"status": "error", "error": srv.load_error})
        else:
            self._json(503, {"status": "loading"})

    def _model_card(self) -> dict[str, Any]:
        engine = self.server.engine
        return {
            "id": self.server.model_id,
            "object": "model",
            "created": int(self.server.started),
            "owned_by": "edgekit",
            "max_context": engine.max_context,
            "backend": engine.backend,
        }

    # --- completions ---

    def _complete(self, request: Request) -> None:
        engine = self.server.engine
        try:
            tools = None
            if request.tools:
                tools = engine.tool_request(
                    request.tools["tools"], request.tools["tool_choice"], request.tools["parallel_tool_calls"]
                )
            ids = engine.prompt_ids(request.prompt, tools=tools)
            options = {"max_new_tokens": engine.max_context, **request.options}
            if options["max_new_tokens"] > engine.max_context:
                raise ApiError(
                    f"max_tokens={options['max_new_tokens']} is more than this model's context of "
                    f"{engine.max_context} tokens; ask for fewer",
                    param="max_tokens",
                    code="invalid_value",
                )
            if len(ids) >= engine.max_context:
                raise ApiError(
                    f"the prompt has {len(ids)} tokens but the context is {engine.max_context}; shorten it",
                    param="messages" if request.endpoint == "chat" else "prompt",
                    code="context_length_exceeded",
                )
            engine.defaults.updated(**options)  # checks the values before the request waits
        except EdgekitError as exc:
            raise engine_error(exc) from None
        answer = Answer(request, self.server.model_id)
        with self.server.turnstile.turn(gone=self._client_gone):
            prompt = request.prompt if request.tools else ids  # tools render the messages again, with them
            chunks = engine.stream(prompt, **options, **request.tools)
            try:
                first = next(chunks)  # the prompt pass: an error here is still a plain 400
            except EdgekitError as exc:
                raise engine_error(exc) from None
            prefix = self._echo(request, ids)
            if request.stream:
                self._stream(answer, prefix, first, chunks)
            else:
                self._answer(answer, prefix, first, chunks)

    def _echo(self, request: Request, ids: list[int]) -> str:
        if not request.echo:
            return ""
        return request.prompt if isinstance(request.prompt, str) else self.server.engine.tokenizer.decode(ids)

    def _answer(self, answer: Answer, prefix: str, first: Chunk, chunks: Iterator[Chunk]) -> None:
        text, last, made = [prefix, first.text], first, len(first.token_ids)
        with _closing(chunks):
            while last.finish_reason is None:
                if self._client_gone():
                    raise ClientGone(f"after {made} tokens; generation stopped")
                last = next(chunks)
                text.append(last.text)
                made += len(last.token_ids)
        done = last.stats
        self._json(200, answer.full("".join(text), last.finish_reason, done.usage, timings(done), last.tool_calls))
        self._log_answer(answer, done)

    def _stream(self, answer: Answer, prefix: str, first: Chunk, chunks: Iterator[Chunk]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers(None)
        self.end_headers()
        last, made = first, len(first.token_ids)
        with _closing(chunks):
            try:
                self._event(answer.chunk(prefix, first=True) if answer.request.endpoint == "chat" else None)
                if prefix and answer.request.endpoint == "text":
                    self._event(answer.chunk(prefix))
                while True:
                    if last.tool_calls:
                        if last.text:
                            self._event(answer.chunk(last.text))
                        for event in answer.tool_call_chunks(last.tool_calls):
                            self._event(event)
                        self._event(answer.chunk("", last.finish_reason))
                    elif last.text or last.finish_reason:
                        self._event(answer.chunk(last.text, last.finish_reason))
                    if last.finish_reason is not None:
                        break
                    if self._client_gone():
                        raise ClientGone("mid-answer")
                    last = next(chunks)
                    made += len(last.token_ids)
                if answer.request.include_usage:
                    self._event(answer.usage_chunk(last.stats.usage, timings(last.stats)))
                self._event("[DONE]")
                self._write_chunk(b"")
            except (BrokenPipeError, ConnectionResetError, TimeoutError, ClientGone):
                raise ClientGone(f"after {made} tokens; generation stopped") from None
            except Exception as exc:  # the status line is sent: report it in the stream, then end
                self.close_connection = True
                error = ApiError(f"internal error: {type(exc).__name__}: {exc}", 500, code="internal_error")
                self.server.log(f"{answer.id}: {error}")
                try:
                    self._event(error.body())
                    self._write_chunk(b"")
                except OSError:
                    pass
                return
        self._log_answer(answer, last.stats)

    def _event(self, payload: dict[str, Any] | str | None) -> None:
        if payload is not None:
            self._write_chunk(sse(payload))

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _log_answer(self, answer: Answer, stats: Stats) -> None:
        self.server.log(f"{answer.id}: {stats.summary()}")

    # --- plumbing ---

    def _client_gone(self) -> bool:
        """True once the client has closed its side (a readable socket with nothing to read)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError("send the body with a Content-Length header (chunked request bodies are not read)", 411)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise ApiError("the request has no valid Content-Length header", 411) from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}", 413)
        body = self.rfile.read(length)
        if len(body) < length:
            raise ClientGone("before sending its whole request")
        return body

    def _discard_body(self) -> None:
        """Read and drop the unread body (bounded in bytes and time) before the connection closes."""
        left = min(int(self.headers.get("Content-Length", "0")), DISCARD_BYTES)
        end = time.monotonic() + DISCARD_S
        try:
            self.connection.settimeout(1.0)
            while left > 0 and time.monotonic() < end:
                data = self.rfile.read1(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _common_headers(self, length: int | None) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        if length is not None:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")

    def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self._common_headers(len(data))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _error(self, exc: ApiError) -> None:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        self._json(exc.status, exc.body(), headers)
        self.server.log(f"{self.command} {self.path} -> {exc.status}: {exc}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
        pass  # one line per answer or error comes from the handlers instead

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def _closing(chunks: Iterator[Any]) -> Iterator[None]:
    """Close the engine's generator on every way out: that stops generation and frees the engine."""
    try:
        yield
    finally:
        chunks.close()  # type: ignore[attr-defined]


_PAGE: bytes | None = None


def _page() -> bytes:
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files(__package__).joinpath("chat.html").read_bytes()
    return _PAGE


def start(
    host: str = "127.0.0.1", port: int = 8080, max_waiting: int = 32, log: Callable[[str], None] | None = None
) -> tuple[Server, threading.Thread]:
    """Listen now and answer in a background thread; the model is attached later (set_engine)."""
    server = Server((host, port), max_waiting=max_waiting, log=log)
    thread = threading.Thread(target=server.serve_forever, name="edgekit-http", daemon=True)
    thread.start()
    return server, thread


def serve(
    artifact: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    profile: str | None = "auto",
    max_waiting: int = 32,
    log: Callable[[str], None] | None = None,
    speculation: str | None = None,
    parallel: int | None = None,
    draft: str | None = None,
    **load_options: Any,
) -> None:
    """Listen at once (GET /health answers 503 while loading), load the model, serve until
    Ctrl-C or SIGTERM. A model that fails to load stops the server and raises its error.

    parallel: requests generated at once (default: the profile's); an artifact whose runtime runs
    one sequence (the npu flavor) is served one request at a time unless parallel was asked for."""
    import signal

    from ..generation.engine import GenerationConfig
    from ..generation.open_engine import load

    server, thread = start(host, port, max_waiting, log)
    server.log(f"listening on {server.url}; loading {artifact}")
    try:
        generation = GenerationConfig(speculation=speculation) if speculation else None
        if draft is not None:  # a draft speculates for one sequence: requests are answered in turn
            engine = load(
                artifact, profile=profile, generation=generation, draft=draft, parallel=parallel, **load_options
            )
        else:
            batched = _parallel(artifact, profile, parallel, server.log)
            try:
                engine = load(artifact, profile=profile, generation=generation, parallel=batched, **load_options)
            except SingleSequenceGraph as exc:
                if parallel is not None:  # asked for: say why not
                    raise
                server.log(f"one request at a time: {exc}")
                engine = load(artifact, profile=profile, generation=generation, **load_options)
    except BaseException as exc:
        server.load_error = str(exc)
        server.shutdown()
        server.server_close()
        raise
    server.set_engine(engine, Path(artifact).resolve().name)
    server.log(
        f"ready: {server.model_id} = {engine.name} ({engine.backend}, context {engine.max_context}"
        f"{_prefix_cache_line(engine)}); "
        f"chat page {server.url}/ , API {server.url}/v1"
    )

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.log("stopping")
    finally:
        server.shutdown()
        server.server_close()


def _parallel(artifact: str, profile: str | None, asked: int | None, log: Callable[[str], None]) -> int | None:
    """The sequences to batch: the asked number, else the profile's; None for an artifact whose
    runtime runs one sequence when none was asked for."""
    from ..device_profiles import RuntimeSettings, load_profile
    from ..generation.loader import why_not_batched

    if asked is not None:
        return asked  # loading says so when the artifact cannot
    why_not = why_not_batched(artifact)
    if why_not is not None:
        log(f"one request at a time: {why_not}")
        return None
    return (load_profile(profile).runtime if profile is not None else RuntimeSettings()).parallel


def _prefix_cache_line(engine: Engine) -> str:
    cache = getattr(engine, "prefix_cache", None)
    return "" if cache is None else f", prefix cache {cache.budget_bytes >> 20} MB"
