"""Peak memory and wall time of one build, each in a fresh process, with its source on a local S3.

Why a subprocess: a Lambda function's footprint is one process, so the build runs alone in a
new interpreter (VmHWM, the high-water mark of its own address space, not inherited from this
process) against a moto server in this one, through ``kdbuckets.service.build`` exactly as the
build function calls it. Datasets: the real WordNet set (when ``../shared/data`` is present)
and a synthetic clustered set (``bench.datasets.synthetic_clustered``, default 500,000 × 384),
written to a temporary ``.npy`` and uploaded (optionally split into shards under a prefix).

From the measured points it fits ``peak = a + b × float32 bytes`` and prints how many vectors
of 384 and 768 dimensions one build function of each memory size holds.

    python -m bench.build_memory [--n 500000] [--dim 384] [--metric cosine] [--shards 1]
                                 [--no-real] [--no-synthetic] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
INDEX_BUCKET = "kdbuckets-bench-index"
SOURCE_BUCKET = "kdbuckets-bench-source"
#: Build function memory sizes (MB) we report capacities for: two common ones and Lambda's maximum.
FUNCTION_MB = (1769, 3008, 10240)
DIMS = (384, 768)
#: Share of a function's memory a build may plan to use (the rest: headroom for the runtime).
HEADROOM = 0.9

# Runs one build through kdbuckets.service.build and reports the process's own peak memory.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time

    from devtools.peak_memory import peak_kb

    from kdbuckets import service
    from kdbuckets.storage import ObjectStore

    event = json.loads(open(sys.argv[1]).read())
    store = ObjectStore(os.environ["INDEX_BUCKET"])
    baseline = peak_kb()
    started = time.perf_counter()
    response = service.build(event, store)
    seconds = time.perf_counter() - started
    with open(sys.argv[2], "w") as out:
        json.dump(
            {
                "response": response,
                "seconds": seconds,
                "baseline_kb": baseline,
                "peak_kb": peak_kb(),
                "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            },
            out,
        )
    """
)


def run_build(event: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """One build in a fresh interpreter; its response, wall time and peak memory."""
    event_file, result_file = workdir / "event.json", workdir / "result.json"
    event_file.write_text(json.dumps(event))
    subprocess.run(
        [sys.executable, "-c", CHILD, str(event_file), str(result_file)],
        check=True,
        env=env,
        cwd=REPO,
    )
    return json.loads(result_file.read_text())


def npy_header_bytes(path: Path) -> int:
    with path.open("rb") as f:
        major, _ = np.lib.format.read_magic(f)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
        return f.tell()


def upload_synthetic(s3: Any, n: int, dim: int, shards: int, workdir: Path) -> dict[str, Any]:
    """Write a clustered (n, dim) float32 set to .npy file(s), upload, return the source."""
    from bench.datasets import synthetic_clustered

    data = synthetic_clustered(n=n, dim=dim, clusters=max(200, n // 250), queries=0, seed=42).vectors
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for i in range(shards):
        path = workdir / f"part-{i:04d}.npy"
        np.save(path, data[bounds[i] : bounds[i + 1]], allow_pickle=False)
        key = "synthetic/vectors.npy" if shards == 1 else f"synthetic/vectors/part-{i:04d}.npy"
        s3.upload_file(str(path), SOURCE_BUCKET, key)
        path.unlink()
    del data
    prefix = "vectors.npy" if shards == 1 else "vectors/"
    return {"vectors": f"s3://{SOURCE_BUCKET}/synthetic/{prefix}"}


def upload_wordnet(s3: Any) -> tuple[dict[str, Any], int, int] | None:
    """The real set, uploaded as `make demo` does (float16 vectors, string ids and labels)."""
    from devtools import local

    sample = local.load_sample()
    if not sample.name.startswith("wordnet"):
        return None
    n, d = sample.vectors.shape
    objects = {
        "wordnet/vectors.npy": local.npy_bytes(sample.vectors.astype(np.float16)),
        "wordnet/ids.npy": local.npy_bytes(sample.ids),
        "wordnet/labels.npy": local.npy_bytes(sample.labels),
    }
    for key, body in objects.items():
        s3.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=body)
    source = {name: f"s3://{SOURCE_BUCKET}/wordnet/{name}.npy" for name in ("vectors", "ids", "labels")}
    return source, n, d


def capacity(a_mb: float, b: float, memory_mb: int, dim: int) -> int:
    """Vectors of ``dim`` dimensions whose build fits ``HEADROOM`` of ``memory_mb``."""
    budget = memory_mb * HEADROOM - a_mb
    return max(0, int(budget * 2**20 / (b * 4 * dim)))


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``peak_mb = a + b × float32_mb`` (b alone through a fixed a for one point)."""
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    if len(points) == 1:
        return 300.0, float((y[0] - 300.0) / x[0])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"))
    parser.add_argument("--shards", type=int, default=1, help="split the synthetic set into N shards")
    parser.add_argument("--no-real", action="store_true")
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import boto3

    from devtools import local
    from devtools.demo import local_s3

    local.use_fake_credentials()
    rows: list[dict[str, Any]] = []
    with local_s3() as url, tempfile.TemporaryDirectory(prefix="kdb-buildmem-") as tmp:
        workdir = Path(tmp)
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL_S3": url,
            "INDEX_BUCKET": INDEX_BUCKET,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO / "shared"), str(REPO), os.environ.get("PYTHONPATH")])
            ),
        }
        env.pop("INDEX_PREFIX", None)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        for bucket in (INDEX_BUCKET, SOURCE_BUCKET):
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket)
        jobs: list[tuple[str, dict[str, Any], int, int]] = []
        if not args.no_real:
            real = upload_wordnet(s3)
            if real is None:
                print("real set: ../shared/data/wordnet_glosses is absent; skipped")
            else:
                jobs.append(("wordnet (real)", real[0], real[1], real[2]))
        if not args.no_synthetic:
            source = upload_synthetic(s3, args.n, args.dim, args.shards, workdir)
            label = f"synthetic clustered{'' if args.shards == 1 else f', {args.shards} shards'}"
            jobs.append((label, source, args.n, args.dim))
        for i, (name, source, n, d) in enumerate(jobs):
            event = {"collection": f"mem{i}", "source": source, "metric": args.metric, "seed": 0}
            print(f"building {name}: {n:,} × {d} ({args.metric}) ...", flush=True)
            result = run_build(event, env, workdir)
            f32_mb = n * d * 4 / 2**20
            peak_mb = result["peak_kb"] / 1024
            row = {
                "dataset": name,
                "n": n,
                "dim": d,
                "float32_mb": round(f32_mb, 1),
                "peak_mb": round(peak_mb, 1),
                "after_imports_mb": round(result["baseline_kb"] / 1024, 1),
                "ratio": round(peak_mb / f32_mb, 2),
                "target_mb": round(2.5 * f32_mb + 300, 1),
                "seconds": round(result["seconds"], 1),
                "buckets": result["response"]["buckets"],
                "timings_ms": result["response"]["timings_ms"],
            }
            rows.append(row)
            print(
                f"  peak RSS {peak_mb:,.0f} MB ({row['ratio']}× float32 bytes {f32_mb:,.0f} MB; target "
                f"≤ {row['target_mb']:,.0f} MB), after imports {row['after_imports_mb']:,.0f} MB, "
                f"wall {row['seconds']} s, {row['buckets']} buckets\n  timings {row['timings_ms']}",
                flush=True,
            )
    if rows:
        a, b = fit([(r["float32_mb"], r["peak_mb"]) for r in rows])
        print(f"\nlinear model: peak ≈ {a:,.0f} MB + {b:.2f} × float32 bytes")
        table = {
            mb: {d: capacity(a, b, mb, d) for d in DIMS} for mb in FUNCTION_MB
        }  # vectors per function size
        print(f"vectors one build function holds (planning to {HEADROOM:.0%} of its memory):")
        for mb, per_dim in table.items():
            print("  " + f"{mb:>6,} MB: " + ", ".join(f"{v:>10,} × {d}" for d, v in per_dim.items()))
        if args.json:
            args.json.write_text(
                json.dumps({"runs": rows, "model": {"a_mb": a, "b": b}, "capacity": table}, indent=1)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
