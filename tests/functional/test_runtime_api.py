"""The local Lambda Runtime API, alone and driven by AWS's runtime interface client.

These tests use handlers written into ``tmp_path``, not the project's functions, so they
check the protocol plumbing of ``make invoke`` independently of kdbuckets itself.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devtools.runtime_api import InvocationResult, LocalRuntimeAPI

ARN = "arn:aws:lambda:us-east-1:123456789012:function:kdbuckets-test"
BASE = "/2018-06-01/runtime"
RESULT_TIMEOUT_S = 15.0  # generous upper bound; a round trip takes well under 1 s

HANDLERS = """
def echo(event, context):
    print("log line from the handler")
    return {
        "echo": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "invoked_function_arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def fail(event, context):
    raise ValueError("k must be \u2265 1")
"""


@pytest.fixture
def api() -> Iterator[LocalRuntimeAPI]:
    server = LocalRuntimeAPI(function_arn=ARN, function_timeout_s=30).start()
    try:
        yield server
    finally:
        server.stop()


def _request(
    api: LocalRuntimeAPI,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(api.address, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- protocol
def test_next_hands_out_the_event_with_lambda_headers(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({"k": 3, "note": "\u2265"})
    before_ms = time.time() * 1000

    status, headers, body = _request(api, "GET", f"{BASE}/invocation/next")

    assert status == 200
    assert json.loads(body) == {"k": 3, "note": "\u2265"}
    assert headers["Lambda-Runtime-Aws-Request-Id"] == request_id
    assert headers["Lambda-Runtime-Invoked-Function-Arn"] == ARN
    assert headers["Lambda-Runtime-Trace-Id"].startswith("Root=1-")
    deadline_ms = int(headers["Lambda-Runtime-Deadline-Ms"])
    assert before_ms + 29_000 < deadline_ms < before_ms + 31_000
    assert api.wait_started(request_id, timeout=1)


def test_response_is_recorded_once(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({})
    _request(api, "GET", f"{BASE}/invocation/next")

    path = f"{BASE}/invocation/{request_id}/response"
    status, _, _ = _request(api, "POST", path, b'{"results": [1, 2]}')
    assert status == 202
    assert api.wait_result(request_id, timeout=1) == InvocationResult(
        request_id, ok=True, payload={"results": [1, 2]}
    )
    # A second answer for the same invocation is refused, and changes nothing.
    status, _, _ = _request(api, "POST", path, b'{"results": []}')
    assert status == 403
    assert api.wait_result(request_id, timeout=1).payload == {"results": [1, 2]}


def test_unknown_request_id_and_path(api: LocalRuntimeAPI) -> None:
    status, _, body = _request(api, "POST", f"{BASE}/invocation/nope/response", b"{}")
    assert status == 400
    assert json.loads(body)["errorType"] == "InvalidRequestID"
    assert _request(api, "GET", "/2018-06-01/runtime/other")[0] == 404


def test_error_keeps_body_and_error_type_header(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({})
    _request(api, "GET", f"{BASE}/invocation/next")
    error = {"errorType": "ValueError", "errorMessage": "bad", "stackTrace": []}

    status, _, _ = _request(
        api,
        "POST",
        f"{BASE}/invocation/{request_id}/error",
        json.dumps(error).encode(),
        {"Lambda-Runtime-Function-Error-Type": "Unhandled"},
    )

    assert status == 202
    result = api.wait_result(request_id, timeout=1)
    assert (result.ok, result.error, result.error_type) == (False, error, "Unhandled")


def test_next_long_polls_until_an_event_arrives(api: LocalRuntimeAPI) -> None:
    got: list[bytes] = []
    poller = threading.Thread(target=lambda: got.append(_request(api, "GET", f"{BASE}/invocation/next")[2]))
    poller.start()
    time.sleep(0.2)
    assert not got, "/next must block while the queue is empty"
    api.enqueue({"late": True})
    poller.join(timeout=5)
    assert got == [b'{"late": true}']


def test_init_error_fails_the_pending_invocation(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({})
    error = {"errorType": "Runtime.ImportModuleError", "errorMessage": "no module"}
    status, _, _ = _request(api, "POST", f"{BASE}/init/error", json.dumps(error).encode())
    assert status == 202
    result = api.wait_result(request_id, timeout=1)
    assert not result.ok
    assert result.error == error


def test_fail_pending_reports_a_dead_runtime(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({})
    _request(api, "GET", f"{BASE}/invocation/next")
    api.fail_pending("Runtime.ExitError", "Runtime exited with error: exit status 1")
    result = api.wait_result(request_id, timeout=1)
    assert result.error == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "Runtime exited with error: exit status 1",
    }


def test_wait_result_times_out(api: LocalRuntimeAPI) -> None:
    request_id = api.enqueue({})
    assert not api.wait_started(request_id, timeout=0.05)
    with pytest.raises(TimeoutError):
        api.wait_result(request_id, timeout=0.05)


# --------------------------------------------------------------------------- awslambdaric
@pytest.fixture
def handler_dir(tmp_path: Path) -> Path:
    pytest.importorskip("awslambdaric")
    code = tmp_path / "code"
    code.mkdir()
    (code / "fixture_handlers.py").write_text(HANDLERS, encoding="utf-8")
    return code


@contextmanager
def _runtime(api: LocalRuntimeAPI, code: Path, handler: str) -> Iterator[Path]:
    """Run ``python -m awslambdaric HANDLER`` against ``api``; always kill it after."""
    log_path = code.parent / "runtime.log"
    env = {
        **os.environ,
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "AWS_LAMBDA_FUNCTION_NAME": "kdbuckets-test",
        "PYTHONPATH": str(code),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", handler],
            cwd=code,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log_path
        finally:
            proc.kill()
            proc.wait(timeout=10)


def _invoke(api: LocalRuntimeAPI, code: Path, handler: str, event: Any) -> InvocationResult:
    request_id = api.enqueue(event)
    with _runtime(api, code, handler) as log_path:
        try:
            return api.wait_result(request_id, timeout=RESULT_TIMEOUT_S)
        except TimeoutError:
            log = log_path.read_text(errors="replace")
            pytest.fail(f"no result from awslambdaric; its output:\n{log}")


def test_awslambdaric_round_trip(api: LocalRuntimeAPI, handler_dir: Path) -> None:
    event = {"collection": "docs", "vectors": [[0.5, -1.0]], "note": "\u2265"}

    result = _invoke(api, handler_dir, "fixture_handlers.echo", event)

    assert result.ok, result.error
    assert result.payload["echo"] == event
    assert result.payload["request_id"] == result.request_id
    assert result.payload["function_name"] == "kdbuckets-test"
    assert result.payload["invoked_function_arn"] == ARN
    assert 0 < result.payload["remaining_ms"] <= 30_000
    log = (handler_dir.parent / "runtime.log").read_text()
    assert "log line from the handler" in log  # awslambdaric leaves stdout to the function


def test_awslambdaric_reports_a_handler_exception(api: LocalRuntimeAPI, handler_dir: Path) -> None:
    result = _invoke(api, handler_dir, "fixture_handlers.fail", {"k": 0})

    assert not result.ok
    assert result.error is not None
    assert result.error["errorType"] == "ValueError"
    assert result.error["errorMessage"] == "k must be \u2265 1"
    assert result.error["requestId"] == result.request_id
    assert any("fixture_handlers.py" in line for line in result.error["stackTrace"])


def test_awslambdaric_reports_an_import_failure(api: LocalRuntimeAPI, handler_dir: Path) -> None:
    result = _invoke(api, handler_dir, "no_such_module.lambda_handler", {})

    assert not result.ok
    assert result.error is not None
    assert result.error["errorType"] == "Runtime.ImportModuleError"
    assert "no_such_module" in result.error["errorMessage"]
    assert result.error_type == "Runtime.ImportModuleError"


# --------------------------------------------------------------------------- template
def test_template_settings_resolve_parameter_defaults(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from devtools.invoke import template_settings

    template = tmp_path / "template.yaml"
    template.write_text(
        """
Parameters:
  Prefix: {Type: String, Default: "idx/"}
Globals:
  Function:
    MemorySize: 512
    Timeout: 30
    Environment:
      Variables:
        INDEX_BUCKET: !Ref Bucket
        INDEX_PREFIX: !Ref Prefix
        POWERTOOLS_SERVICE_NAME: kdbuckets
Resources:
  Bucket: {Type: AWS::S3::Bucket}
  QueryFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/query/
      Timeout: 10
      Environment:
        Variables:
          EXTRA: !Sub "${AWS::Region}"
          FLAG: true
""",
        encoding="utf-8",
    )

    env, settings = template_settings("query", template)

    # Resource references and !Sub need a deployed stack: left out, not guessed.
    assert env == {
        "INDEX_PREFIX": "idx/",
        "POWERTOOLS_SERVICE_NAME": "kdbuckets",
        "FLAG": "true",
    }
    assert settings == {"MemorySize": 512, "Timeout": 10}
