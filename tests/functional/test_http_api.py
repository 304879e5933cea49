"""The HTTP API over real HTTP: `devtools.serve` turns each request into an API Gateway HTTP API
(payload 2.0) event for functions/api/app.py, exactly as `make serve` does.

Every route answers good input as the JSON-event interface does, and bad input with its HTTP
status and the one error body ``{"error": {"type", "field", "message"}}``. The committed
``openapi.json`` is what the resolver generates, and the template deploys the same routes
behind the IAM authorizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from cfnlint.decode import decode

from devtools import serve
from kdbuckets import ObjectStore, Searcher, reading, service
from kdbuckets.errors import (
    CollectionNotFound,
    Conflict,
    CorruptObject,
    InternalError,
    InvalidRequest,
    StorageError,
)
from kdbuckets.storage import AccessDenied
from tests.conftest import EVENTS, INDEX_BUCKET, REPO, FakeLambdaContext

QUERY = {"vectors": [[0.85, 0.15, 0.05, 0.0]], "k": 3}


@dataclass(frozen=True)
class Api:
    url: str
    module: ModuleType

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One HTTP request; the status and the decoded JSON body (errors included)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def api(module_s3: Any) -> Iterator[Api]:
    """The API on a free localhost port, over ``tiny`` (committed inline build) and ``ints``."""
    store = ObjectStore(INDEX_BUCKET)
    service.build(json.loads((EVENTS / "build_inline.json").read_text()), store)
    ints = [{"id": i * 10, "vector": [float(i), 1.0, 0.5]} for i in range(1, 30)]
    service.build({"collection": "ints", "source": {"items": ints}, "metric": "l2", "bucket_size": 8}, store)
    module = serve.load_api()
    module._searcher = None
    server = serve.start(module.lambda_handler)
    try:
        yield Api(server.url, module)
    finally:
        server.shutdown()
        server.server_close()
        module._searcher = None
        reading.SHARDS.clear()


def error_of(body: dict[str, Any]) -> tuple[str, str | None]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "field", "message"}
    return body["error"]["type"], body["error"]["field"]


# -- the document and the deployment ---------------------------------------------------------
def test_openapi_json_is_what_the_resolver_generates(api: Api) -> None:
    stale = "openapi.json is stale: regenerate it with `make openapi` (python -m devtools.serve --openapi)"
    assert (REPO / "openapi.json").read_text() == api.module.openapi_json(), stale


def test_the_template_deploys_the_documented_routes_behind_iam() -> None:
    template, matches = decode(str(REPO / "template.yaml"))
    assert not matches
    resources = template["Resources"]
    auth = resources["HttpApi"]["Properties"]["Auth"]
    assert (auth["DefaultAuthorizer"], auth["EnableIamAuthorizer"]) == ("AWS_IAM", True)
    function = resources["ApiFunction"]
    assert function["Metadata"]["BuildMethod"] == "makefile"
    props = function["Properties"]
    assert props["CodeUri"] == "functions/api/"
    deployed = {
        (e["Properties"]["Method"], e["Properties"]["Path"])
        for e in props["Events"].values()
        if e["Type"] == "HttpApi" and e["Properties"]["ApiId"] == {"Ref": "HttpApi"}
    }
    document = json.loads((REPO / "openapi.json").read_text())
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert deployed == documented
    statements = [s for policy in props["Policies"] for s in policy["Statement"]]
    actions = {
        a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}  # serves writes, deletes nothing
    objects = [s["Resource"] for s in statements if "s3:PutObject" in s["Action"]]
    assert objects == [{"Fn::Sub": "${IndexBucket.Arn}/${IndexPrefix}*"}]
    assert document["security"] == [{"sigv4": []}]


# -- good input ------------------------------------------------------------------------------
def test_query_answers_as_the_query_event_does(api: Api) -> None:
    status, body = api.call("POST", "/collections/tiny/query", {**QUERY, "include_metadata": True})
    direct = service.query(
        {"collection": "tiny", **QUERY, "include_metadata": True}, Searcher(ObjectStore(INDEX_BUCKET))
    )
    assert status == 200
    assert body["results"] == direct["results"]
    assert body["version"] == direct["version"]


def test_fetch_by_ids_and_one_vector_by_its_path(api: Api) -> None:
    status, body = api.call(
        "POST", "/collections/tiny/fetch", {"ids": ["food-1", "nope"], "include_vectors": True}
    )
    assert status == 200
    assert [v["id"] for v in body["vectors"]] == ["food-1"]
    assert body["missing"] == ["nope"]
    status, one = api.call("GET", "/collections/tiny/vectors/food-1")
    assert status == 200
    assert {k: one[k] for k in ("id", "label", "metadata", "vector")} == body["vectors"][0]
    status, lean = api.call(
        "GET", "/collections/tiny/vectors/food-1?include_vectors=false&include_metadata=false"
    )
    assert (status, "vector" in lean, "metadata" in lean) == (200, False, False)
    status, number = api.call("GET", "/collections/ints/vectors/70")  # an integer id, written as text
    assert (status, number["id"], number["vector"]) == (200, 70, [7.0, 1.0, 0.5])


def test_list_pages_follow_the_cursor_to_the_end(api: Api) -> None:
    ids: list[str] = []
    path = "/collections/tiny/vectors?limit=3"
    while True:
        status, page = api.call("GET", path)
        assert status == 200
        ids += [v["id"] for v in page["vectors"]]
        if page["cursor"] is None:
            break
        path = f"/collections/tiny/vectors?limit=3&cursor={page['cursor']}"
    tiny = json.loads((EVENTS / "build_inline.json").read_text())["source"]["items"]
    assert sorted(ids) == sorted(it["id"] for it in tiny)


def test_count_with_and_without_a_filter(api: Api) -> None:
    assert api.call("POST", "/collections/tiny/count", {})[1]["count"] == 8
    status, body = api.call("POST", "/collections/tiny/count", {"filter": {"lang": "en"}})
    assert (status, body["count"], body["filtered"]) == (200, 4, True)


def test_describe_versions_and_the_collection_listing(api: Api) -> None:
    status, described = api.call("GET", "/collections/tiny")
    assert (status, described["count"], described["is_head"]) == (200, 8, True)
    status, pinned = api.call("GET", f"/collections/tiny?version={described['version']}")
    assert (status, pinned["version"]) == (200, described["version"])
    status, versions = api.call("GET", "/collections/tiny/versions")
    assert status == 200
    assert described["version"] in [v["version"] for v in versions["versions"]]
    status, listed = api.call("GET", "/collections")
    assert status == 200
    assert {"tiny", "ints"} <= {c["collection"] for c in listed["collections"]}


def test_upsert_and_delete_change_what_the_api_reads(api: Api) -> None:
    items = [{"id": f"w{i}", "vector": [1.0, float(i), 0.0, 0.5], "label": "x"} for i in range(5)]
    service.build({"collection": "writable", "source": {"items": items}}, ObjectStore(INDEX_BUCKET))
    new = {"id": "w9", "vector": [0.0, 0.0, 1.0, 0.0], "label": "y", "metadata": {"n": 9}}
    status, upserted = api.call("POST", "/collections/writable/vectors", {"items": [new]})
    assert (status, upserted["upserted"], upserted["count"]) == (200, 1, 6)
    assert api.call("GET", "/collections/writable/vectors/w9")[1]["metadata"] == {"n": 9}
    status, deleted = api.call("POST", "/collections/writable/delete", {"ids": ["w9", "w0", "never"]})
    assert (status, deleted["deleted"], deleted["not_found"], deleted["count"]) == (200, 2, 1, 4)
    assert api.call("GET", "/collections/writable/vectors/w9")[0] == 404


def test_the_committed_http_events_run_through_the_handler(api: Api) -> None:
    for name in ("http_describe_tiny.json", "http_query_tiny.json"):
        event = json.loads((EVENTS / name).read_text())
        response = api.module.lambda_handler(event, FakeLambdaContext())
        assert response["statusCode"] == 200, response["body"]
    assert [h["id"] for h in json.loads(response["body"])["results"][0]] == ["sport-1", "sport-2", "sport-3"]


# -- bad input -------------------------------------------------------------------------------
BAD = [
    ("POST", "/collections/tiny/query", {**QUERY, "k": 0}, 400, "InvalidRequest", "k"),
    ("POST", "/collections/tiny/query", {"k": 3}, 400, "InvalidRequest", "vectors"),
    ("POST", "/collections/tiny/query", {**QUERY, "collection": "x"}, 400, "InvalidRequest", "collection"),
    ("POST", "/collections/tiny/query", {"vectors": [[0.1, 0.2]]}, 400, "InvalidRequest", "vectors[0]"),
    (
        "POST",
        "/collections/tiny/query",
        {**QUERY, "probes": 2, "recall_target": 0.9},
        400,
        "InvalidRequest",
        "probes",
    ),
    (
        "POST",
        "/collections/tiny/query",
        {**QUERY, "filter": {"y": {"$where": 1}}},
        400,
        "InvalidRequest",
        "filter.y.$where",
    ),
    ("POST", "/collections/tiny/query", b"{not json", 400, "InvalidRequest", "body"),
    ("POST", "/collections/tiny/query", [1, 2], 400, "InvalidRequest", "body"),
    ("POST", "/collections/no-such/query", QUERY, 404, "CollectionNotFound", "collection"),
    ("POST", "/collections/bad..name/query", QUERY, 400, "InvalidRequest", "collection"),
    ("POST", "/collections/tiny/fetch", {"ids": []}, 400, "InvalidRequest", "ids"),
    ("POST", "/collections/tiny/fetch", {"ids": ["a", 1]}, 400, "InvalidRequest", "ids[1]"),
    ("POST", "/collections/tiny/fetch", {"ids": ["a"], "version": "a b"}, 400, "InvalidRequest", "version"),
    ("GET", "/collections/tiny/vectors/no-such-id", None, 404, "VectorNotFound", "id"),
    ("GET", "/collections/ints/vectors/seven", None, 404, "VectorNotFound", "id"),
    (
        "GET",
        "/collections/tiny/vectors/sport-1?version=20200101T000000000000Z-00000000",
        None,
        404,
        "CollectionNotFound",
        "version",
    ),
    ("GET", "/collections/tiny/vectors?limit=0", None, 400, "InvalidRequest", "limit"),
    ("GET", "/collections/tiny/vectors?limit=many", None, 400, "InvalidRequest", "limit"),
    ("GET", "/collections/tiny/vectors?cursor=forged", None, 400, "InvalidRequest", "cursor"),
    (
        "POST",
        "/collections/tiny/count",
        {"filter": {"year": {"$gte": []}}},
        400,
        "InvalidRequest",
        "filter.year.$gte",
    ),
    ("POST", "/collections/tiny/count", {"where": {}}, 400, "InvalidRequest", "where"),
    ("GET", "/collections/no-such", None, 404, "CollectionNotFound", "collection"),
    ("GET", "/collections/no-such/versions", None, 404, "CollectionNotFound", "collection"),
    (
        "POST",
        "/collections/tiny/vectors",
        {"items": [{"id": "a", "vector": [1, 0, 0, 0]}]},
        400,
        "InvalidRequest",
        "items[0].label",
    ),
    (
        "POST",
        "/collections/tiny/vectors",
        {
            "items": [
                {"id": "a", "vector": [1, 0, 0, 0], "label": "x"},
                {"id": "a", "vector": [0, 1, 0, 0], "label": "x"},
            ]
        },
        400,
        "InvalidRequest",
        "items[1].id",
    ),
    (
        "POST",
        "/collections/tiny/vectors",
        {"items": [{"vector": [1, 0, 0, 0]}]},
        400,
        "InvalidRequest",
        "items[0].id",
    ),
    ("POST", "/collections/tiny/delete", {"ids": [True]}, 400, "InvalidRequest", "ids[0]"),
    ("POST", "/collections/no-such/delete", {"ids": ["a"]}, 404, "CollectionNotFound", "collection"),
    ("DELETE", "/collections/tiny", None, 404, "NotFound", None),
    ("GET", "/nowhere", None, 404, "NotFound", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind", "field"), BAD, ids=[f"{b[0]} {b[1]}" for b in BAD]
)
def test_bad_requests_get_their_status_and_one_error_body_naming_the_field(
    api: Api, method: str, path: str, body: Any, status: int, kind: str, field: str | None
) -> None:
    got, answer = api.call(method, path, raw=body if isinstance(body, bytes) else None, body=body)
    assert got == status, answer
    assert error_of(answer) == (kind, field)
    if status == 400:  # InvalidRequest messages read "<field> <problem>"
        assert answer["error"]["message"].startswith(f"{field} ")


def test_a_body_over_five_mib_is_refused_with_413(api: Api) -> None:
    body = json.dumps({"vectors": [[0.5] * 4], "pad": "x" * (5 << 20)}).encode()
    status, answer = api.call("POST", "/collections/tiny/query", raw=body)
    assert status == 413
    assert error_of(answer) == ("PayloadTooLarge", "body")
    assert f"at most {api.module.MAX_BODY_BYTES:,}" in answer["error"]["message"]


def test_every_error_kind_has_its_status_and_unexpected_ones_say_only_where_to_look(api: Api) -> None:
    module = api.module
    assert module.status_of(InvalidRequest("k", "bad")) == 400
    assert module.status_of(CollectionNotFound("x")) == 404
    assert module.status_of(Conflict("retries ran out")) == 409
    assert module.status_of(StorageError("S3 request failed: SlowDown")) == 503
    assert module.status_of(AccessDenied("access denied to s3://b/k")) == 500
    assert module.status_of(CorruptObject("k", "bad")) == 500
    assert module.status_of(KeyError("boom")) == 500
    assert module.error_body(Conflict("retries ran out")) == {
        "error": {"type": "Conflict", "field": None, "message": "retries ran out"}
    }
    for hidden in (KeyError("secret detail"), InternalError("secret detail")):
        detail = module.error_body(hidden)["error"]
        assert detail["type"] == "InternalError"
        assert "secret" not in detail["message"]


# -- make serve ------------------------------------------------------------------------------
def test_make_serve_answers_curl_at_once() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT_URL", "INDEX_"))}
    env["PYTHONPATH"] = f"{REPO / 'shared'}{os.pathsep}{REPO}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.serve", "--port", "0"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        banner = proc.stdout.readline() if proc.stdout else ""
        assert " on http://127.0.0.1:" in banner, banner
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        status, body = Api(url, ModuleType("unused")).call("POST", "/collections/tiny/query", QUERY)
        assert status == 200
        assert [h["id"] for h in body["results"][0]] == ["sport-1", "sport-2", "sport-3"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
