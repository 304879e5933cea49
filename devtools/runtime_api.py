"""A small local implementation of the AWS Lambda Runtime API (version 2018-06-01).

Why: ``sam local invoke`` needs Docker, which the development machine lacks. AWS's own
runtime interface client (``awslambdaric``) only needs an HTTP endpoint speaking the
Runtime API, named by ``AWS_LAMBDA_RUNTIME_API``. Serving that protocol locally lets a
handler run through exactly the code path it takes in Lambda: event unmarshalling,
``LambdaContext`` construction, response marshalling and error reporting.

Implemented endpoints (paths as in the AWS OpenAPI specification):

- ``GET  /2018-06-01/runtime/invocation/next`` -- blocks until an event is queued, then
  returns it with the ``Lambda-Runtime-*`` headers.
- ``POST /2018-06-01/runtime/invocation/{id}/response`` -- records the result, ``202``.
- ``POST /2018-06-01/runtime/invocation/{id}/error`` -- records the error body and the
  ``Lambda-Runtime-Function-Error-Type`` header, ``202``.
- ``POST /2018-06-01/runtime/init/error`` -- records an initialisation failure and fails
  every pending invocation with it (as Lambda does for the invoke that triggered init).

Not implemented: response streaming, SnapStart ``restore`` endpoints, extensions and
telemetry APIs; none of them is used by a plain buffered Python handler.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["MAX_PAYLOAD_BYTES", "InvocationResult", "LocalRuntimeAPI"]

_log = logging.getLogger(__name__)

API_PREFIX = "/2018-06-01/runtime"
#: Synchronous invocation limit for both the request and the response payload (6 MB).
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"


@dataclass(frozen=True)
class InvocationResult:
    """Outcome of one invocation, as the caller of ``Invoke`` would see it.

    ``payload`` is the decoded JSON response (any JSON value; the raw text if the body is
    not JSON). ``error`` is the error document posted by the runtime (``errorType``,
    ``errorMessage``, ``stackTrace``, ...) or one synthesised by the caller (timeouts,
    runtime exits). ``error_type`` is the ``Lambda-Runtime-Function-Error-Type`` header
    when the runtime sent one (awslambdaric 4.2.2 sends it with init errors only; for a
    handler exception the type is in ``error["errorType"]``).
    """

    request_id: str
    ok: bool
    payload: Any = None
    error: dict[str, Any] | None = None
    error_type: str | None = None


@dataclass
class _Invocation:
    request_id: str
    body: bytes
    started: bool = False
    result: InvocationResult | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _new_trace_id() -> str:
    """An X-Ray trace header of the shape Lambda sends (not sampled: nothing listens)."""
    return f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};Parent={secrets.token_hex(8)};Sampled=0"


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", errors="replace")


class LocalRuntimeAPI:
    """Serves the Runtime API on ``127.0.0.1`` (ephemeral port) for one runtime process.

    Usage::

        api = LocalRuntimeAPI(function_arn=arn, function_timeout_s=30)
        api.start()   # then start the runtime with AWS_LAMBDA_RUNTIME_API=api.address
        rid = api.enqueue({"k": 1})
        result = api.wait_result(rid, timeout=40)
        api.stop()

    Thread-safe: the HTTP server runs each request in its own thread and all state lives
    behind one condition variable.
    """

    def __init__(
        self,
        function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local",
        function_timeout_s: float = 30.0,
    ) -> None:
        self.function_arn = function_arn
        self.function_timeout_s = function_timeout_s
        self.init_error: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._queue: deque[_Invocation] = deque()
        self._invocations: dict[str, _Invocation] = {}
        self._closing = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Bind an ephemeral port on loopback and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            args=(0.05,),  # poll interval: keeps stop() quick
            name="lambda-runtime-api",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def address(self) -> str:
        """``host:port``, the value ``AWS_LAMBDA_RUNTIME_API`` expects (no scheme)."""
        if self._server is None:
            raise RuntimeError("not started")
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        """Release blocked ``/next`` long-polls and shut the server down. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ caller side
    def enqueue(self, event: Any) -> str:
        """Queue one JSON-serialisable event; return its request id."""
        body = json.dumps(event, ensure_ascii=False).encode("utf-8")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"event is {len(body)} bytes; Lambda accepts at most {MAX_PAYLOAD_BYTES}")
        inv = _Invocation(request_id=str(uuid.uuid4()), body=body)
        with self._cond:
            self._invocations[inv.request_id] = inv
            if self.init_error is not None:
                self._complete(inv, self._init_failure(inv.request_id))
            else:
                self._queue.append(inv)
                self._cond.notify_all()
        return inv.request_id

    def wait_started(self, request_id: str, timeout: float) -> bool:
        """Wait until the runtime has picked the invocation up (or it already ended).

        Separates Lambda's init phase (imports, up to 10 s) from the invoke phase, whose
        budget is the function timeout.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            inv = self._invocations[request_id]
            while not (inv.started or inv.done.is_set()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_result(self, request_id: str, timeout: float) -> InvocationResult:
        """Block until the invocation has a result; ``TimeoutError`` after ``timeout`` s."""
        with self._cond:
            inv = self._invocations[request_id]
        if not inv.done.wait(timeout):
            raise TimeoutError(f"no result for {request_id} within {timeout:g} s")
        assert inv.result is not None
        return inv.result

    def fail_pending(self, error_type: str, message: str) -> None:
        """Fail every unfinished invocation, e.g. because the runtime process exited."""
        with self._cond:
            for inv in self._invocations.values():
                if not inv.done.is_set():
                    error = {"errorType": error_type, "errorMessage": message}
                    self._complete(inv, InvocationResult(inv.request_id, False, error=error))

    # ------------------------------------------------------------------ runtime side
    def _next(self) -> _Invocation | None:
        """Long-poll for the next event; ``None`` when the server is closing."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            inv = self._queue.popleft()
            inv.started = True
            self._cond.notify_all()
            return inv

    def _post(
        self, request_id: str, ok: bool, body: bytes, error_type: str | None
    ) -> tuple[HTTPStatus, dict[str, str]]:
        with self._cond:
            inv = self._invocations.get(request_id)
            if inv is None or not inv.started:
                return HTTPStatus.BAD_REQUEST, {
                    "errorType": "InvalidRequestID",
                    "errorMessage": f"unknown request id {request_id!r}",
                }
            if inv.done.is_set():
                return HTTPStatus.FORBIDDEN, {
                    "errorType": "InvalidStateTransition",
                    "errorMessage": f"invocation {request_id} already has a result",
                }
            if ok and len(body) > MAX_PAYLOAD_BYTES:
                error = {
                    "errorType": "Function.ResponseSizeTooLarge",
                    "errorMessage": (
                        f"Response payload size ({len(body)} bytes) exceeded maximum "
                        f"allowed payload size ({MAX_PAYLOAD_BYTES} bytes)."
                    ),
                }
                self._complete(inv, InvocationResult(request_id, False, error=error))
                return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error
            if ok:
                result = InvocationResult(request_id, True, payload=_decode_json(body))
            else:
                decoded = _decode_json(body)
                error = decoded if isinstance(decoded, dict) else {"errorMessage": decoded}
                result = InvocationResult(request_id, False, error=error, error_type=error_type)
            self._complete(inv, result)
            return HTTPStatus.ACCEPTED, {"status": "OK"}

    def _post_init_error(self, body: bytes, error_type: str | None) -> None:
        decoded = _decode_json(body)
        error = decoded if isinstance(decoded, dict) else {"errorMessage": decoded}
        if error_type and "errorType" not in error:
            error["errorType"] = error_type
        with self._cond:
            self.init_error = error
            for inv in self._invocations.values():
                if not inv.done.is_set():
                    self._complete(inv, self._init_failure(inv.request_id))
            self._queue.clear()

    def _init_failure(self, request_id: str) -> InvocationResult:
        assert self.init_error is not None
        error_type = self.init_error.get("errorType")
        return InvocationResult(
            request_id,
            False,
            error=dict(self.init_error),
            error_type=error_type if isinstance(error_type, str) else None,
        )

    def _complete(self, inv: _Invocation, result: InvocationResult) -> None:
        """Record a result; caller holds ``self._cond``."""
        inv.result = result
        inv.done.set()
        self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when the runtime process is killed mid-connection (expected)."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            _log.debug("runtime connection from %s closed", client_address)
            return
        super().handle_error(request, client_address)


def _make_handler(api: LocalRuntimeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1: the runtime client (libcurl) keeps its connection alive between calls
        # and may send ``Expect: 100-continue``, which BaseHTTPRequestHandler answers.
        protocol_version = "HTTP/1.1"
        server_version = "kdbuckets-local-runtime-api"

        def log_message(self, fmt: str, *args: Any) -> None:
            _log.debug("%s " + fmt, self.address_string(), *args)

        def _send(
            self,
            status: HTTPStatus,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
        ) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except ConnectionError:
                # The runtime process is killed as soon as its result is recorded; a
                # reply that finds the socket gone is expected, not an error.
                self.close_connection = True

        def _send_json(self, status: HTTPStatus, doc: dict[str, str]) -> None:
            self._send(status, json.dumps(doc).encode("utf-8"))

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            if self.path != f"{API_PREFIX}/invocation/next":
                self._send_json(HTTPStatus.NOT_FOUND, {"errorType": "NotFound"})
                return
            inv = api._next()
            if inv is None:
                self.close_connection = True
                self._send_json(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    {
                        "errorType": "Runtime.ShuttingDown",
                        "errorMessage": "server stopping",
                    },
                )
                return
            deadline_ms = int((time.time() + api.function_timeout_s) * 1000)
            self._send(
                HTTPStatus.OK,
                inv.body,
                {
                    "Lambda-Runtime-Aws-Request-Id": inv.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                    "Lambda-Runtime-Trace-Id": _new_trace_id(),
                },
            )

        def do_POST(self) -> None:
            body = self._read_body()
            error_type = self.headers.get(ERROR_TYPE_HEADER)
            path = self.path
            if path == f"{API_PREFIX}/init/error":
                api._post_init_error(body, error_type)
                self._send_json(HTTPStatus.ACCEPTED, {"status": "OK"})
                return
            prefix = f"{API_PREFIX}/invocation/"
            if path.startswith(prefix):
                request_id, _, action = path[len(prefix) :].partition("/")
                if action in ("response", "error"):
                    status, doc = api._post(request_id, action == "response", body, error_type)
                    self._send_json(status, doc)
                    return
            self._send_json(HTTPStatus.NOT_FOUND, {"errorType": "NotFound"})

    return Handler
