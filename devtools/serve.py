"""`make serve`: the HTTP API on localhost against a local S3 — `sam local start-api` without Docker.

    python -m devtools.serve [--host 127.0.0.1] [--port 8000] [--sample]
    python -m devtools.serve --openapi > openapi.json     # regenerate the committed OpenAPI document

Each HTTP request is turned into the event API Gateway's HTTP API sends (payload format 2.0)
and handed to ``functions/api/app.py``'s ``lambda_handler`` in this process, one request at a
time like a single Lambda container; its response becomes the HTTP response. Without
``AWS_ENDPOINT_URL_S3`` an embedded moto S3 server is started and the ``tiny`` collection of
``events/build_inline.json`` is built in it, so this works at once::

    curl -s localhost:8000/collections/tiny
    curl -s localhost:8000/collections/tiny/query -d '{"vectors": [[0.85, 0.15, 0.05, 0.0]], "k": 3}'

``--sample`` also seeds the sample collection ``demo`` exactly as ``make invoke`` does (built once,
then restored from its cache). With ``AWS_ENDPOINT_URL_S3`` set (your own moto server, or AWS)
nothing is created and ``INDEX_BUCKET`` is required. Requests are not signed here: the deployed
API checks SigV4 in API Gateway (the AWS_IAM authorizer), before the function runs.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devtools import local
from devtools.demo import FakeContext, local_s3, quiet_environment

API_APP = local.REPO / "functions" / "api" / "app.py"
MODULE_NAME = "kdbuckets_api_app"
#: API Gateway HTTP APIs refuse larger payloads themselves (the function never sees them).
GATEWAY_MAX_BODY = 10 << 20
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded")

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


def load_api() -> ModuleType:
    """``functions/api/app.py``, imported by path under its own module name."""
    module = sys.modules.get(MODULE_NAME)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(MODULE_NAME, API_APP)
    if spec is None or spec.loader is None:
        raise ImportError(f"no handler module at {API_APP}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


# -- HTTP ⇄ API Gateway HTTP API (payload format 2.0) ------------------------------------------
def to_event(
    method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str = "127.0.0.1"
) -> dict[str, Any]:
    """The event an HTTP API sends for this request (route ``$default``, stage ``$default``).

    As API Gateway does: header names lower-cased (repeats joined by commas), the path
    percent-decoded in ``rawPath``, repeated query parameters joined by commas, and a body
    that is not UTF-8 text passed base64-encoded.
    """
    parts = urlsplit(target)
    path = unquote(parts.path) or "/"
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    content_type = headers.get("content-type", "")
    text = None
    if not content_type or content_type.startswith(_TEXT_TYPES):
        with contextlib.suppress(UnicodeDecodeError):
            text = body.decode("utf-8")
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": parts.query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "localhost"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": text is None and bool(body),
    }
    if query:
        event["queryStringParameters"] = query
    if body:
        event["body"] = text if text is not None else base64.b64encode(body).decode()
    return event


def from_response(response: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body bytes of a handler's HTTP API response."""
    body = response.get("body") or ""
    raw = base64.b64decode(body) if response.get("isBase64Encoded") else str(body).encode("utf-8")
    headers = {str(k): str(v) for k, v in (response.get("headers") or {}).items()}
    return int(response.get("statusCode", 200)), headers, raw


class ApiServer(ThreadingHTTPServer):
    """A localhost HTTP server that answers every request through ``handler`` (one at a time)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Handler, *, log: bool = True) -> None:
        super().__init__(address, _RequestHandler)
        self.handler = handler
        self.log = log
        self.lock = threading.Lock()  # one request at a time, as in one Lambda container

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.handler(event, FakeContext("kdbuckets-api"))


class _RequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > GATEWAY_MAX_BODY:
            self._send(413, {"content-type": "application/json"}, b'{"message":"Request Entity Too Large"}')
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        event = to_event(self.command, self.path, headers, body, self.client_address[0])
        try:
            status, out_headers, raw = from_response(self.server.invoke(event))
        except Exception as exc:  # the function failed outright: API Gateway answers 500 itself
            print(f"handler failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            status, out_headers, raw = (
                500,
                {"content-type": "application/json"},
                b'{"message":"Internal Server Error"}',
            )
        self._send(status, out_headers, raw)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve  # noqa: N815

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log:
            super().log_message(format, *args)


def start(handler: Handler, host: str = "127.0.0.1", port: int = 0, *, log: bool = False) -> ApiServer:
    """An :class:`ApiServer` serving in a background thread (``port`` 0: a free one)."""
    server = ApiServer((host, port), handler, log=log)
    threading.Thread(target=server.serve_forever, name="kdbuckets-api", daemon=True).start()
    return server


# -- the local S3 ----------------------------------------------------------------------------
def seed(sample: bool, endpoint: str) -> None:
    """Build ``tiny`` (and with ``sample`` the demo collection, cached like `make invoke`'s)."""
    if sample:
        local.prepare(endpoint, build_index=True)
        return
    from kdbuckets import ObjectStore, service

    event = json.loads((local.REPO / "events" / "build_inline.json").read_text())
    service.build(event, ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", "")))


@contextlib.contextmanager
def s3_endpoint(sample: bool) -> Iterator[str]:
    """``AWS_ENDPOINT_URL_S3`` as given, or an embedded moto server with the bucket seeded."""
    given = os.environ.get("AWS_ENDPOINT_URL_S3")
    if given:
        if not os.environ.get("INDEX_BUCKET"):
            raise SystemExit("INDEX_BUCKET is required with AWS_ENDPOINT_URL_S3")
        yield given
        return
    with local_s3() as endpoint:
        quiet_environment(endpoint)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=local.INDEX_BUCKET
        )
        seed(sample, endpoint)
        yield endpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--sample", action="store_true", help="also seed the sample collection 'demo'")
    parser.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    args = parser.parse_args(argv)
    if args.openapi:
        sys.stdout.write(load_api().openapi_json())
        return 0
    with s3_endpoint(args.sample) as endpoint:
        api = load_api()
        server = ApiServer((args.host, args.port), api.lambda_handler)
        print(f"kdbuckets HTTP API on {server.url} (S3 at {endpoint}); Ctrl-C stops it", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
