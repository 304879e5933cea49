"""Cold-start figures: what importing each handler costs, and what the /tmp bucket tier saves.

Import time is measured in fresh interpreter processes (the way a Lambda cold start pays it):
first the third-party dependencies every function needs (numpy, boto3, pydantic, msgpack,
Powertools), then — in the same process — the handler module on top of them, so the second
figure is exactly what our own code adds. Medians over several runs.

The disk tier is measured as a *new* searcher (a new worker process or a container whose
memory cache was evicted) on a machine whose ``/tmp`` tier already holds the buckets: GETs and
latency of a query with and without the tier, under the same S3 latency model as the rest of
the bench.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.s3sim import LatencyModel
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ("query", "build", "write")
DEPENDENCIES = (
    "numpy, boto3, pydantic (BaseModel, Field, annotated_types), msgpack, Powertools Logger and Metrics"
)

_PROBE = """
import time
t0 = time.perf_counter()
import numpy, boto3, botocore.config, msgpack, annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
t1 = time.perf_counter()
import importlib
importlib.import_module("functions.{handler}.app")
t2 = time.perf_counter()
import json, sys
print(json.dumps({{"deps_ms": (t1 - t0) * 1e3, "handler_ms": (t2 - t1) * 1e3,
                  "modules": sorted(m for m in sys.modules if m.startswith("kdbuckets"))}}))
"""


def import_times(runs: int = 7) -> dict[str, dict[str, Any]]:
    """Per handler: median ms to import the dependencies, then the handler on top of them."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'shared'}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": ""}
    out: dict[str, dict[str, Any]] = {}
    for handler in HANDLERS:
        samples = []
        for _ in range(runs + 1):  # the first run warms the OS file cache and writes .pyc files
            done = subprocess.run(
                [sys.executable, "-c", _PROBE.format(handler=handler)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                env=env,
            )
            samples.append(json.loads(done.stdout))
        samples = samples[1:]
        deps = statistics.median(s["deps_ms"] for s in samples)
        own = statistics.median(s["handler_ms"] for s in samples)
        out[handler] = {
            "deps_ms": deps,
            "handler_ms": own,
            "share": own / deps,
            "modules": samples[-1]["modules"],
        }
    return out


def disk_tier_effect(
    store: ObjectStore, slug: str, queries: np.ndarray, model: LatencyModel, k: int = 10, n: int = 40
) -> dict[str, dict[str, float]]:
    """GETs and latency of queries by a fresh searcher, without and with a populated /tmp tier."""
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="kdbuckets-tier-") as tier:
        Searcher(store, disk_dir=tier, disk_bytes=4 << 30).search(slug, queries[:n], k=k)  # fills the tier
        model.install(store.client)
        try:
            for label, disk in (("memory cache only", None), ("with /tmp tier", tier)):
                times, gets = [], []
                for i in range(n):
                    # A new worker: empty memory cache; the manifest is read once beforehand so
                    # the figures compare bucket reads only.
                    searcher = Searcher(store, disk_dir=disk, disk_bytes=4 << 30)
                    searcher.manifest(slug)
                    model.reset()
                    t0 = time.perf_counter()
                    result = searcher.search(slug, queries[i : i + 1], k=k)
                    times.append((time.perf_counter() - t0) * 1e3)
                    gets.append(result.stats.buckets_fetched)
                out[label] = {
                    "p50": float(np.percentile(times, 50)),
                    "p99": float(np.percentile(times, 99)),
                    "bucket_gets": float(np.mean(gets)),
                }
        finally:
            model.uninstall(store.client)
    return out


def startup_markdown(imports: dict[str, dict[str, Any]], tier: dict[str, dict[str, float]] | None) -> str:
    """The report section (Markdown)."""
    lines = [
        "## Cold start",
        "",
        f"Import time in a fresh process, median of runs: dependencies ({DEPENDENCIES}) first, "
        "then the handler module on top of them — the second column is what kdbuckets itself adds "
        "to a cold start.",
        "",
        "| handler | dependencies ms | handler adds ms | share | kdbuckets modules loaded |",
        "|---|---|---|---|---|",
    ]
    for handler, r in imports.items():
        lines.append(
            f"| {handler} | {r['deps_ms']:.0f} | {r['handler_ms']:.0f} | {r['share']:.0%} | {len(r['modules'])} |"
        )
    query_modules = ", ".join(m.removeprefix("kdbuckets.") for m in imports["query"]["modules"])
    lines += ["", f"The query function loads: {query_modules}."]
    if tier:
        lines += [
            "",
            "A new worker (empty memory cache) answering single-vector queries at the default recall target, "
            "without and with the `/tmp` tier (`DISK_CACHE_MB`) already holding the collection's buckets:",
            "",
            "| cache | bucket GETs per query | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for label, r in tier.items():
            lines.append(f"| {label} | {r['bucket_gets']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m bench.startup: the import-time table alone
    print(startup_markdown(import_times(), None))
