"""The kdbuckets package: what `pip install .` and the wheel give a user, and the README's Python API.

Pinned: the wheel holds the library (kdbuckets/*.py and its dist-info) and nothing else — no
handlers, no tests, no devtools; installed with ``--no-deps`` into a fresh virtualenv it
imports with an empty PYTHONPATH. The two package descriptions (the repository root's
pyproject.toml for users, shared/pyproject.toml for the Lambda layer build, which sees only
shared/) agree, the layer's pinned requirements satisfy the package's ranges, and the
"Python API" example of the README runs as written on moto.

Building and installing takes ~15 s (setuptools is fetched for the isolated build), so those
tests are ``slow``; the agreement checks and the API example are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared"


def _ranges() -> dict[str, Requirement]:
    lines = (SHARED / "requirements.in").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name: r for r in reqs}


def _pins() -> dict[str, str]:
    lines = (SHARED / "requirements.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if "==" in line and not line.startswith("#")]
    return {name.strip(): version.strip() for name, version in pairs}


def test_the_two_package_descriptions_agree() -> None:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    layer = tomllib.loads((SHARED / "pyproject.toml").read_text())
    for key in ("name", "dynamic", "description", "requires-python", "license", "scripts"):
        assert root["project"].get(key) == layer["project"].get(key), key
    assert root["project"]["optional-dependencies"] == layer["project"]["optional-dependencies"]
    assert root["tool"]["setuptools"]["package-dir"] == {"": "shared"}
    assert root["tool"]["setuptools"]["packages"] == layer["tool"]["setuptools"]["packages"] == ["kdbuckets"]
    root_dyn, layer_dyn = root["tool"]["setuptools"]["dynamic"], layer["tool"]["setuptools"]["dynamic"]
    assert root_dyn["version"] == layer_dyn["version"] == {"attr": "kdbuckets.__version__"}
    assert root_dyn["dependencies"] == {"file": ["shared/requirements.in"]}
    assert layer_dyn["dependencies"] == {"file": ["requirements.in"]}


def test_the_layer_pins_satisfy_the_package_ranges_and_cover_every_import() -> None:
    pins, ranges = _pins(), _ranges()
    for name, requirement in ranges.items():
        assert name in pins, f"{name} is a package dependency but not pinned for the layer"
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement))
    # Only the handlers need powertools: an extra of the package, pinned for the layer.
    assert set(pins) - set(ranges) == {"aws-lambda-powertools"}


def _build_wheel(tmp: Path) -> Path:
    """Build from a copy of the tree: setuptools writes build/ and *.egg-info next to its input."""
    src = tmp / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(
        SHARED, src / "shared", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "data", "build")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "-w", str(tmp / "dist"), "--no-deps", "-q"],
        cwd=src,
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    (wheel,) = (tmp / "dist").glob("kdbuckets-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_holds_the_library_only_and_imports_in_a_clean_venv(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    modules = {n for n in names if n.startswith("kdbuckets/")}
    assert modules == {f"kdbuckets/{p.name}" for p in (SHARED / "kdbuckets").glob("*.py")}
    assert all(n.startswith(("kdbuckets/", "kdbuckets-")) for n in names), names
    assert not any("test" in n or "functions" in n or "devtools" in n for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {
        line.split(" ", 1)[1].split(";")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist: ")
    } >= {
        "boto3<2,>=1.36",
        "numpy<3,>=2.0",
    }

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    clean["PYTHONPATH"] = ""
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        env=clean,
    )
    # No dependencies installed: the package itself imports (its names load lazily).
    probe = "import kdbuckets, pathlib; print(kdbuckets.__version__, pathlib.Path(kdbuckets.__file__).parent)"
    out = subprocess.run(
        [str(python), "-c", probe], check=True, env=clean, cwd=tmp_path, capture_output=True, text=True
    ).stdout.split()
    assert out[0] == __import__("kdbuckets").__version__
    assert Path(out[1]).is_relative_to(env_dir)  # the installed copy, not the repository's
    # With its dependencies reachable (the dev venv's, after the venv's own site-packages, so the
    # installed kdbuckets still wins), the names resolve to the installed modules.
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "numpy").is_dir())
    (site / "zz_dev_dependencies.pth").write_text(f"{deps}\n")
    probe = "import kdbuckets; print(kdbuckets.Searcher.__module__, kdbuckets.build_index.__module__)"
    found = subprocess.run(
        [str(python), "-c", probe], check=True, env=clean, cwd=tmp_path, capture_output=True, text=True
    )
    assert found.stdout.split() == ["kdbuckets.searcher", "kdbuckets.builder"]


# --------------------------------------------------------------------------- the README example
def test_the_readme_python_api_example_runs_on_moto(aws_env: None) -> None:
    """The code block of README's "Python API" section, verbatim (kept in /tmp/readme_issue10.md too)."""
    from moto import mock_aws

    with mock_aws():
        from kdbuckets import storage

        storage.reset_clients()
        namespace: dict[str, Any] = {}
        exec(compile(README_EXAMPLE, "README Python API", "exec"), namespace)
        assert namespace["list_collections"](namespace["store"]) == []  # dropped
        storage.reset_clients()
    assert namespace["hits"].ids[0][0] == "doc-0"
    assert namespace["votes"].predicted[0] == "even"
    assert namespace["written"].version != namespace["built"].version
    assert namespace["gone"].count == 2001


README_EXAMPLE = """
import boto3
import numpy as np
from kdbuckets import BuildParams, ObjectStore, Searcher, build_index, make_collection, writer
from kdbuckets import drop_collection, list_collections

boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="my-index")
store = ObjectStore("my-index", prefix="indexes/")  # every collection lives under the prefix

rng = np.random.default_rng(0)
vectors = rng.normal(size=(2_000, 64)).astype(np.float32)
ids = np.array([f"doc-{i}" for i in range(2_000)])
labels = np.array(["even" if i % 2 == 0 else "odd" for i in range(2_000)])
data = make_collection(vectors, ids, labels, metric="cosine")
built = build_index(store, "docs", data, BuildParams(bucket_size=200))
print(built.version, built.count, built.buckets)

searcher = Searcher(store)  # keep it: it caches HEAD, manifests and buckets between queries
hits = searcher.search("docs", vectors[:3], k=5)  # probes from the build's recall calibration
print(hits.ids[0], hits.distances[0], hits.stats.as_dict()["buckets_fetched"])
votes = searcher.classify("docs", vectors[:1], k=5)
print(votes.predicted[0], votes.votes(0))

new = make_collection(
    rng.normal(size=(2, 64)).astype(np.float32),
    np.array(["doc-new-1", "doc-new-2"]),
    np.array(["odd", "odd"]),
    metric="cosine",
)
written = writer.write(store, "docs", upserts=new)  # a new version; HEAD swapped by CAS
gone = writer.write(store, "docs", deletes=np.array(["doc-1"]))
print(gone.version, gone.count)  # 2,001 vectors

print([c.as_dict() for c in list_collections(store)])
drop_collection(store, "docs", expected_version=gone.version)  # everything under indexes/docs/
"""
