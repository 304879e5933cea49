"""Run one Lambda handler with one event through AWS's runtime interface client.

    python -m devtools.invoke FN EVENT_PATH [--timeout S] [--memory MB]

Why: ``sam local invoke`` needs Docker. This does the same job without it: it serves the
Lambda Runtime API locally (:mod:`devtools.runtime_api`), starts
``python -m awslambdaric app.lambda_handler`` in ``functions/FN`` with the environment
Lambda would give it (``shared/`` on ``PYTHONPATH`` like the layer's ``/opt/python``, the
function's variables, memory and timeout from ``template.yaml``), hands it the event and
reports what the caller of ``Invoke`` would get back.

stdout carries only the result: the response JSON, or the error document (exit status 1).
The runtime's own output -- the function's logs -- goes to stderr.

S3: if ``AWS_ENDPOINT_URL_S3`` is set it is used as is (your moto server, or real AWS), and
``INDEX_BUCKET`` must name the index bucket there (nothing is created or seeded). Otherwise an
embedded moto S3 server is started on 127.0.0.1 with fake credentials and
``devtools.local.prepare`` fills it with the demo data (and, except for FN=build, the demo
index) so that a query has something to hit. The demo index is built once and cached (see
``devtools.local.prepare``); ``--rebuild`` builds it again.
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from contextlib import ExitStack, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from devtools.runtime_api import InvocationResult, LocalRuntimeAPI

REPO = Path(__file__).resolve().parents[1]
#: Lambda's init phase limit; the function timeout starts when the event is handed out.
INIT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_REGION = "us-east-1"
DEFAULT_INDEX_BUCKET = "kdbuckets-demo-index"
FAKE_ACCOUNT = "123456789012"


class SetupError(Exception):
    """The invocation could not be set up (no such function, missing package ...)."""


# --------------------------------------------------------------------------- template
class _Intrinsic:
    """A CloudFormation intrinsic (``!Ref X`` ...) kept unevaluated."""

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value


def _load_template(path: Path) -> dict[str, Any]:
    """Parse a SAM template, tolerating the ``!Ref``-style tags plain YAML rejects."""
    import yaml  # PyYAML: present in the dev venv (moto, cfn-lint); optional here.

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Intrinsic:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return _Intrinsic(suffix, value)

    Loader.add_multi_constructor("!", construct)
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader subclass
    return doc if isinstance(doc, dict) else {}


def _resolve(value: Any, parameters: Mapping[str, Any]) -> str | None:
    """A template value as an environment string; ``!Ref Param`` -> the parameter default.

    Anything else that needs a deployed stack (``!Ref Resource``, ``!GetAtt``, ``!Sub``)
    resolves to ``None`` and is left out, as there is no stack here.
    """
    if isinstance(value, dict) and set(value) == {"Ref"}:
        value = _Intrinsic("Ref", value["Ref"])
    if isinstance(value, _Intrinsic):
        param = parameters.get(value.value) if value.name == "Ref" else None
        if isinstance(param, dict) and "Default" in param:
            return _resolve(param["Default"], parameters)
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def template_settings(fn: str, template: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Environment variables and ``MemorySize``/``Timeout``/``Handler`` for ``functions/fn``.

    Reads ``Globals.Function`` and the ``AWS::Serverless::Function`` whose ``CodeUri`` is
    ``functions/<fn>``, like ``sam local invoke`` would. Missing template or PyYAML: empty.
    """
    if not template.is_file() or importlib.util.find_spec("yaml") is None:
        return {}, {}
    doc = _load_template(template)
    parameters = doc.get("Parameters") or {}
    glob = (doc.get("Globals") or {}).get("Function") or {}
    props: dict[str, Any] = {}
    for resource in (doc.get("Resources") or {}).values():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        candidate = resource.get("Properties") or {}
        code_uri = str(candidate.get("CodeUri", "")).strip("/").removeprefix("./")
        if code_uri == f"functions/{fn}":
            props = candidate
            break
    env: dict[str, str] = {}
    for source in (glob, props):
        variables = (source.get("Environment") or {}).get("Variables") or {}
        for name, raw in variables.items():
            resolved = _resolve(raw, parameters)
            if resolved is not None:
                env[str(name)] = resolved
    settings = {key: props.get(key, glob.get(key)) for key in ("MemorySize", "Timeout", "Handler")}
    return env, {key: value for key, value in settings.items() if value is not None}


# --------------------------------------------------------------------------- S3
def _start_embedded_s3(stack: ExitStack, fn: str, rebuild: bool = False) -> None:
    """Start moto's S3 on 127.0.0.1, point this process (and so the child) at it, fill it."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the venv
        raise SetupError(
            "moto is needed for the embedded S3 server (pip install -r requirements-dev.txt),"
            " or set AWS_ENDPOINT_URL_S3 to an S3 endpoint of your own"
        ) from exc
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Fake credentials on purpose: nothing started here may reach a real account.
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
    )
    os.environ.pop("AWS_PROFILE", None)
    os.environ.setdefault("INDEX_BUCKET", DEFAULT_INDEX_BUCKET)
    print(f"[invoke] embedded moto S3 at {endpoint}", file=sys.stderr)
    # prepare() builds the demo index in this process: make the layer importable here too.
    if str(REPO / "shared") not in sys.path:
        sys.path.insert(0, str(REPO / "shared"))
    try:
        from devtools import local
    except ModuleNotFoundError as exc:
        if exc.name != "devtools.local":
            raise
        print("[invoke] devtools/local.py not found: S3 starts empty", file=sys.stderr)
        return
    with redirect_stdout(sys.stderr):  # stdout is reserved for the result
        local.prepare(endpoint_url=endpoint, build_index=(fn != "build"), rebuild=rebuild)


# --------------------------------------------------------------------------- runtime
def _pump(src: IO[bytes], dst: IO[str]) -> None:
    """Copy the runtime's output to our stderr.

    awslambdaric joins the lines of an error report with ``\\r`` so that CloudWatch keeps
    it as one record; on a terminal that overprints, so show it as separate lines.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := src.read1(65536):  # type: ignore[attr-defined]
        text = decoder.decode(chunk)
        dst.write(text.replace("\r\n", "\n").replace("\r", "\n"))
        dst.flush()


def _restore_environ(saved: Mapping[str, str]) -> None:
    os.environ.clear()
    os.environ.update(saved)


def _stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lambda_env(
    fn: str,
    fn_dir: Path,
    api: LocalRuntimeAPI,
    template_env: Mapping[str, str],
    memory_mb: int,
    handler: str,
    region: str,
) -> dict[str, str]:
    """Template variables, overridden by the shell's, then the ones Lambda itself sets."""
    name = f"kdbuckets-{fn}"
    today = datetime.now(UTC).strftime("%Y/%m/%d")
    pythonpath = [str(REPO / "shared"), str(fn_dir)]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])
    env = {**template_env, **os.environ}
    env.update(
        AWS_LAMBDA_RUNTIME_API=api.address,
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        _HANDLER=handler,
        LAMBDA_TASK_ROOT=str(fn_dir),
        # Like sam local: tells aws-lambda-powertools not to emit X-Ray segments.
        AWS_SAM_LOCAL="true",
        AWS_LAMBDA_FUNCTION_NAME=name,
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE=str(memory_mb),
        AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
        AWS_LAMBDA_LOG_GROUP_NAME=f"/aws/lambda/{name}",
        AWS_LAMBDA_LOG_STREAM_NAME=f"{today}/[$LATEST]{uuid.uuid4().hex}",
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
    )
    return env


def _require_index_bucket() -> None:
    """With an endpoint of the caller's own, the handlers need INDEX_BUCKET from the caller.

    The template's INDEX_BUCKET is ``!Ref IndexBucket``, which only a deployed stack resolves;
    without this check the handler would fail inside Lambda with a bare ``KeyError``.
    """
    if not os.environ.get("INDEX_BUCKET"):
        raise SetupError(
            f"AWS_ENDPOINT_URL_S3 is set ({os.environ['AWS_ENDPOINT_URL_S3']}), so that S3 is used as "
            "is and nothing is seeded: set INDEX_BUCKET to its index bucket (and INDEX_PREFIX if "
            "any), e.g. make invoke INDEX_BUCKET=my-index FN=query EVENT=events/query_tiny.json; "
            "or unset AWS_ENDPOINT_URL_S3 to use an embedded moto S3 with the demo data"
        )


def invoke(
    fn: str,
    event: Any,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    *,
    rebuild: bool = False,
) -> InvocationResult:
    """Run ``functions/<fn>`` once with ``event``; return what ``Invoke`` would return."""
    fn_dir = REPO / "functions" / fn
    if not (fn_dir / "app.py").is_file():
        known = sorted(p.parent.name for p in (REPO / "functions").glob("*/app.py"))
        raise SetupError(f"no handler at {fn_dir / 'app.py'} (functions: {', '.join(known)})")
    if importlib.util.find_spec("awslambdaric") is None:
        raise SetupError("awslambdaric is not installed: pip install -r requirements-invoke.txt")
    template_env, settings = template_settings(fn, REPO / "template.yaml")
    timeout = float(timeout_s or settings.get("Timeout") or DEFAULT_TIMEOUT_S)
    memory = int(memory_mb or settings.get("MemorySize") or DEFAULT_MEMORY_MB)
    handler = str(settings.get("Handler") or "app.lambda_handler")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION

    with ExitStack() as stack:
        saved_environ = dict(os.environ)
        stack.callback(_restore_environ, saved_environ)
        if os.environ.get("AWS_ENDPOINT_URL_S3"):
            _require_index_bucket()
        else:
            _start_embedded_s3(stack, fn, rebuild)
        api = LocalRuntimeAPI(
            function_arn=f"arn:aws:lambda:{region}:{FAKE_ACCOUNT}:function:kdbuckets-{fn}",
            function_timeout_s=timeout,
        )
        api.start()
        stack.callback(api.stop)
        request_id = api.enqueue(event)

        proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", handler],
            cwd=fn_dir,
            env=_lambda_env(fn, fn_dir, api, template_env, memory, handler, region),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the child below
        )
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, sys.stderr), daemon=True)
        pump.start()
        # Callbacks run last-in first-out: the child goes before the API server, so it
        # is never left long-polling a closed socket.
        stack.callback(pump.join, 2)
        stack.callback(_stop_process, proc)

        def watch() -> None:
            code = proc.wait()
            status = f"signal {-code}" if code < 0 else f"exit status {code}"
            api.fail_pending("Runtime.ExitError", f"Runtime exited with error: {status}")

        threading.Thread(target=watch, daemon=True).start()

        timed_out = InvocationResult(
            request_id,
            False,
            error={
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds",
            },
        )
        if not api.wait_started(request_id, INIT_TIMEOUT_S + timeout):
            return timed_out
        try:
            # Small grace: the deadline header was computed when the event was handed out.
            return api.wait_result(request_id, timeout + 0.5)
        except TimeoutError:
            return timed_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.invoke",
        description="Run functions/FN/app.py once with the JSON event in EVENT_PATH through "
        "awslambdaric and a local Lambda Runtime API. Prints the response (or the error "
        "document, exit status 1) on stdout; function logs go to stderr.",
    )
    parser.add_argument("fn", metavar="FN", help="function directory name under functions/")
    parser.add_argument("event", metavar="EVENT_PATH", type=Path, help="JSON event file")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="function timeout in seconds (default: template.yaml, else 30)",
    )
    parser.add_argument(
        "--memory",
        type=int,
        default=None,
        help="AWS_LAMBDA_FUNCTION_MEMORY_SIZE in MB (default: template.yaml, else 1024)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="embedded S3 only: build the demo index again instead of using the cached one",
    )
    args = parser.parse_args(argv)
    try:
        event = json.loads(args.event.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read event {args.event}: {exc}")
    try:
        result = invoke(args.fn, event, timeout_s=args.timeout, memory_mb=args.memory, rebuild=args.rebuild)
    except SetupError as exc:
        print(f"[invoke] {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    document = result.payload if result.ok else result.error
    if isinstance(document, str):
        print(document)
    else:
        print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
