"""Run the distributed build's state machine locally: moto's Step Functions, our real handlers.

    python -m devtools.sfn_local EVENT_PATH [--quiet]

What runs where. The definition is ``statemachine/build.asl.json`` itself (its
``DefinitionSubstitutions`` filled in as SAM would), executed by moto's Step Functions
interpreter (``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``, moto
5.2.5): Distributed Maps, the ``ItemReader`` over ``s3:listObjectsV2``, ``Retry``/``Catch`` and
the Fail states are moto's. Its ``lambda:invoke`` tasks go, as on AWS, through the Lambda API
(moto's Lambda backend: the function must exist, errors come back as ``FunctionError``);
moto would run the function in a Docker container, so :class:`LocalStepFunctions` patches that
one method (``LambdaFunction._invoke_lambda``) to call ``functions/distbuild/app.py``'s
``lambda_handler`` in this process with the event, exactly as the Lambda runtime would, and
to answer with the runtime's error document (``errorType`` = the exception's class) when
it raises. No response is canned: every task does its real work against S3.

S3: with ``AWS_ENDPOINT_URL_S3`` set, the handlers and the map's listing use that endpoint
and ``INDEX_BUCKET`` must exist there (moto's in-process mock only hosts Step Functions,
Lambda and IAM: its S3 patterns match AWS hostnames, not your endpoint). Unset, the mock
hosts S3 too: the index bucket is created and, when the event's source prefix is empty,
demo shards are generated there (3 shards of clustered vectors).

Known differences from AWS (moto 5.2.5): a Distributed Map whose child fails still succeeds
(the ``Collect``/``Commit`` steps then name the missing shard or partition, which is why they
check); ``ItemReader`` lists one page (≤ 1,000 objects); map children's events are not in the
execution history, so progress is printed by the dispatcher, one line per finished task.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import sys
import threading
import time
import traceback
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
DEFINITION = REPO / "statemachine" / "build.asl.json"
HANDLER = REPO / "functions" / "distbuild" / "app.py"
FUNCTION_NAME = "kdbuckets-DistributedBuildFunction"
STATE_MACHINE_NAME = "kdbuckets-build"
REGION = "us-east-1"
DEFAULT_INDEX_BUCKET = "kdbuckets-demo-index"
POLL_S = 0.05

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class FakeContext:
    """The attributes of a Lambda context that Powertools and our handlers read."""

    function_name: str = FUNCTION_NAME
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:{FUNCTION_NAME}"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@dataclass
class ExecutionResult:
    status: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    states: list[str]  # top-level states entered, in order
    tasks: list[dict[str, Any]]  # every task the dispatcher ran: step, item, ok, seconds, result
    seconds: float


def definition(function_arn: str) -> str:
    """The state machine's definition with its ``DefinitionSubstitutions`` applied (as SAM does)."""
    return DEFINITION.read_text().replace("${DistributedBuildFunctionArn}", function_arn)


def load_handler() -> Handler:
    """``functions/distbuild/app.py``'s ``lambda_handler``, imported by path (every app is ``app``)."""
    spec = importlib.util.spec_from_file_location("kdbuckets_distbuild_app", HANDLER)
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def _item(event: dict[str, Any]) -> str:
    return str(event.get("key", event.get("partition", event.get("plan", {}).get("collection", ""))))


class LocalStepFunctions:
    """The build state machine on moto (already started by the caller), tasks run in-process.

    ``concurrency`` bounds how many tasks run at once in this process (moto starts one thread
    per map child up to ``MaxConcurrency``; a laptop has fewer cores than that).
    """

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        concurrency: int | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        import boto3

        self.handler = handler or load_handler()
        self.progress = progress or (lambda line: None)
        self.slots = threading.Semaphore(concurrency or os.cpu_count() or 2)
        self.tasks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(
            RoleName=f"kdbuckets-local-{uuid.uuid4().hex[:8]}",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        lam = boto3.client("lambda", region_name=REGION)
        self.function_arn = lam.create_function(
            FunctionName=FUNCTION_NAME,
            Runtime="python3.13",
            Role=role,
            Handler="app.lambda_handler",
            Code={"ZipFile": _zip_of(HANDLER)},
            Timeout=900,
            MemorySize=3008,
        )["FunctionArn"]
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.state_machine_arn = self.sfn.create_state_machine(
            name=STATE_MACHINE_NAME, definition=definition(self.function_arn), roleArn=role
        )["stateMachineArn"]

    @contextmanager
    def dispatching(self) -> Iterator[None]:
        """Route moto's Lambda invocations of our function to the in-process handler."""
        from moto.awslambda.models import LambdaFunction

        original = LambdaFunction._invoke_lambda
        local = self

        def invoke(fn: Any, event: Any = None) -> tuple[str, bool, str]:
            if fn.function_name != FUNCTION_NAME:
                return original(fn, event)
            return local._invoke(event)

        with mock.patch.object(LambdaFunction, "_invoke_lambda", invoke):
            yield

    def _invoke(self, event: Any) -> tuple[str, bool, str]:
        """One invocation as the Lambda runtime makes it: the result, or its error document."""
        payload = json.loads(event) if isinstance(event, str | bytes) else (event or {})
        step = str(payload.get("step", "?")) if isinstance(payload, dict) else "?"
        item = _item(payload) if isinstance(payload, dict) else ""
        context = FakeContext()
        with self.slots:
            started = time.perf_counter()
            try:
                result = self.handler(payload, context)
                body, errored, summary = json.dumps(result), False, _summary(result)
                record = result
            except Exception as exc:  # the runtime reports every exception the same way
                doc = {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "requestId": context.aws_request_id,
                    "stackTrace": traceback.format_tb(exc.__traceback__),
                }
                body, errored, summary = json.dumps(doc), True, f"FAILED {type(exc).__name__}: {exc}"
                record = {"errorType": doc["errorType"], "errorMessage": doc["errorMessage"]}
            seconds = time.perf_counter() - started
        with self._lock:
            self.tasks.append(
                {
                    "step": step,
                    "item": item,
                    "ok": not errored,
                    "seconds": round(seconds, 3),
                    "result": record,
                }
            )
            done = sum(1 for t in self.tasks if t["step"] == step)
        self.progress(
            f"[{time.perf_counter() - self._started:7.2f}s] {step:<9} #{done:<4} {item[:70]:<70} "
            f"{seconds:6.2f}s  {summary}"
        )
        return body, errored, ""

    def run(self, event: dict[str, Any], *, timeout_s: float = 3600.0) -> ExecutionResult:
        """Start one execution with ``event``, print top-level states as they pass, wait for it."""
        self._started = time.perf_counter()
        self.tasks = []
        with self.dispatching():
            arn = self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=f"build-{uuid.uuid4().hex[:12]}",
                input=json.dumps(event),
            )["executionArn"]
            seen = 0
            states: list[str] = []
            deadline = time.monotonic() + timeout_s
            while True:
                described = self.sfn.describe_execution(executionArn=arn)
                events = self.sfn.get_execution_history(executionArn=arn)["events"]
                for ev in events[seen:]:
                    entered = ev.get("stateEnteredEventDetails")
                    if entered:
                        states.append(entered["name"])
                        self.progress(
                            f"[{time.perf_counter() - self._started:7.2f}s] state  {entered['name']}"
                        )
                seen = len(events)
                if described["status"] != "RUNNING":
                    break
                if time.monotonic() > deadline:
                    self.sfn.stop_execution(executionArn=arn, error="Timeout", cause="sfn_local timeout")
                    raise TimeoutError(f"execution still running after {timeout_s} s")
                time.sleep(POLL_S)
        output = described.get("output")
        return ExecutionResult(
            status=described["status"],
            output=json.loads(output) if output else None,
            error=described.get("error"),
            cause=described.get("cause"),
            states=states,
            tasks=list(self.tasks),
            seconds=round(time.perf_counter() - self._started, 2),
        )


def _summary(result: Any) -> str:
    if not isinstance(result, dict):
        return "ok"
    shown = {
        k: v
        for k, v in result.items()
        if k in ("rows", "partitions", "buckets", "reused", "version", "skipped")
    }
    return "ok " + json.dumps(shown, default=str)


def _zip_of(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(path, path.name)
    return buf.getvalue()


@contextmanager
def local_aws() -> Iterator[None]:
    """moto in this process with its Step Functions interpreter on (and Docker-backed Lambda,
    whose one Docker call :meth:`LocalStepFunctions.dispatching` replaces)."""
    from moto import mock_aws

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


# -------------------------------------------------------------------------------- CLI
def _seed_demo_source(event: dict[str, Any]) -> None:
    """Three clustered ``.npy`` shards (with ids) under the event's prefixes, if empty."""
    import boto3
    import numpy as np

    from kdbuckets.storage import S3Uri

    s3 = boto3.client("s3", region_name=REGION)
    vectors = S3Uri.parse(event["source"]["vectors"], field="source.vectors")
    ids = event["source"].get("ids")
    for bucket in {vectors.bucket, os.environ["INDEX_BUCKET"]}:
        with suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
    if s3.list_objects_v2(Bucket=vectors.bucket, Prefix=vectors.key).get("KeyCount", 0):
        return
    rng = np.random.default_rng(0)
    dim, per_shard = 32, 2000
    centres = rng.normal(size=(24, dim))
    for shard in range(3):
        which = rng.integers(0, len(centres), per_shard)
        block = (centres[which] + 0.35 * rng.normal(size=(per_shard, dim))).astype(np.float32)
        s3.put_object(Bucket=vectors.bucket, Key=f"{vectors.key}part-{shard:03d}.npy", Body=_npy(block))
        if ids:
            uri = S3Uri.parse(ids, field="source.ids")
            names = np.array([f"doc-{shard}-{i:05d}" for i in range(per_shard)])
            s3.put_object(Bucket=uri.bucket, Key=f"{uri.key}part-{shard:03d}.npy", Body=_npy(names))
    print(f"seeded 3 demo shards of {per_shard} × {dim} under {event['source']['vectors']}", file=sys.stderr)


def _npy(array: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "event", type=Path, help="execution input (a distributed build request), e.g. events/sfn_build.json"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final response")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="tasks run at once (default: CPU count)"
    )
    args = parser.parse_args(argv)
    event = json.loads(args.event.read_text())
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "kdbuckets-local")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
    own_s3 = not os.environ.get("AWS_ENDPOINT_URL_S3")
    if own_s3:
        os.environ.setdefault("INDEX_BUCKET", DEFAULT_INDEX_BUCKET)
    elif not os.environ.get("INDEX_BUCKET"):
        parser.error("AWS_ENDPOINT_URL_S3 is set: set INDEX_BUCKET to the index bucket there")

    def say(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    with local_aws():
        if own_s3:
            _seed_demo_source(event)
        machine = LocalStepFunctions(concurrency=args.concurrency, progress=say)
        result = machine.run(event)
    doc = {"status": result.status, "seconds": result.seconds}
    if result.output is not None:
        doc["output"] = result.output
    if result.error is not None:
        doc |= {"error": result.error, "cause": result.cause}
    print(json.dumps(doc, indent=2))
    return 0 if result.status == "SUCCEEDED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
