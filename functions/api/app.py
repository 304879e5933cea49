"""HTTP API Lambda: the JSON-event operations as REST routes (API Gateway HTTP API, IAM auth).

Thin by design, like the other handlers: Powertools' ``APIGatewayHttpResolver`` routes each
request and validates it against body models generated from ``kdbuckets.events`` (the same
pydantic models the event interface uses, without the ``collection`` and ``operation`` that the
URL carries), so the OpenAPI document (``openapi.json``) is generated from them. Each route
then makes one ``kdbuckets.service`` call — which validates the event again, exactly as the
event interface does — and returns its response.

Every error has one body, ``{"error": {"type", "field", "message"}}``, and a status: 400 an
invalid request (naming the field), 404 an unknown collection, version or id, 409 a conflict
that outlived the retries, 413 a body over :data:`MAX_BODY_BYTES`, 503 storage unavailable
(transient: retry), 500 anything else (details only in the logs).

Configuration (environment): ``INDEX_BUCKET`` and ``INDEX_PREFIX``; ``BUCKET_CACHE_MB`` bounds
the warm container's cache of decoded buckets (default 256).
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Annotated, Any, cast

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ValidationError, create_model

from kdbuckets import __version__, catalog, events, service
from kdbuckets.errors import (
    CollectionNotFound,
    ConfigurationError,
    Conflict,
    CorruptObject,
    InternalError,
    InvalidRequest,
    KdBucketsError,
    StorageError,
)
from kdbuckets.params import to_invalid_request
from kdbuckets.reading import DEFAULT_LIST_LIMIT, MAX_CURSOR_CHARS, MAX_LIST_LIMIT
from kdbuckets.searcher import Searcher
from kdbuckets.storage import AccessDenied, ObjectStore

#: Largest request body: it travels as a JSON string inside Lambda's 6 MB invocation event,
#: where every quote is escaped, so 5 MiB leaves room for the escapes and the envelope.
MAX_BODY_BYTES = 5 << 20

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver(enable_validation=True)
_searcher: Searcher | None = None


def searcher() -> Searcher:
    """The container-wide searcher (its store serves the writes too), built on first use."""
    global _searcher
    if _searcher is None:
        store = ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", ""))
        _searcher = Searcher(store, cache_bytes=int(os.environ.get("BUCKET_CACHE_MB", "256")) << 20)
    return _searcher


# -- request bodies: the event models without what the URL says --------------------------------
def _body(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model``'s fields except ``collection`` and ``operation`` (the URL carries those).

    Field constraints come along (so the OpenAPI schema and the first validation are the
    model's); its cross-field validators do not, which is why every route's service call
    validates the whole event again.
    """
    fields: Any = {
        n: (f.annotation, f) for n, f in model.model_fields.items() if n not in ("collection", "operation")
    }
    return create_model(name, __config__=model.model_config, __doc__=model.__doc__, **fields)


QueryBody = _body(events.QueryRequest, "QueryBody")
UpsertBody = _body(events.UpsertRequest, "UpsertBody")
DeleteBody = _body(events.DeleteRequest, "DeleteBody")
FetchBody = _body(events.FetchRequest, "FetchBody")
CountBody = _body(events.CountRequest, "CountBody")

Collection = Annotated[str, Path(description="collection name (1-128 of A-Za-z0-9._-)")]
Version = Annotated[str | None, Query(description="a published version (default: the live one)")]


def _event(collection: str, body: BaseModel, operation: str | None = None) -> dict[str, Any]:
    """The JSON event this request stands for: the body as sent, plus the URL's parts."""
    event = {**body.model_dump(exclude_unset=True), "collection": collection}
    return event if operation is None else {**event, "operation": operation}


# -- errors ----------------------------------------------------------------------------------
class PayloadTooLarge(InvalidRequest):
    """The request body exceeds :data:`MAX_BODY_BYTES`."""


class VectorNotFound(KdBucketsError, LookupError):
    """No vector with this id in the version read."""

    def __init__(self, collection: str, ident: str, version: str) -> None:
        super().__init__(f"collection {collection!r} has no vector with id {ident!r} (version {version})")


class ErrorDetail(BaseModel):
    type: str  # the exception class: InvalidRequest, CollectionNotFound, VectorNotFound, Conflict, …
    field: str | None  # the request field at fault, when there is one
    message: str


class ErrorBody(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail


ErrorBody.model_rebuild()  # resolve the annotation here, even when loaded by path (devtools)


ERROR_RESPONSES: dict[int, Any] = {
    code: {"description": text, "content": {"application/json": {"model": ErrorBody}}}
    for code, text in (
        (400, "Invalid request; error.field names the field"),
        (404, "Unknown collection, version or id"),
        (409, "Conflict: another writer kept publishing first and the retries ran out"),
        (413, "Request body larger than 5 MiB"),
        (500, "Internal error (details in the function's logs)"),
        (503, "Storage unavailable; safe to retry"),
    )
}


def status_of(exc: Exception) -> int:
    """The HTTP status of an error (the one mapping; see the module docstring)."""
    for kind, status in (
        (PayloadTooLarge, 413),
        (InvalidRequest, 400),
        (CollectionNotFound, 404),
        (VectorNotFound, 404),
        (Conflict, 409),
        (AccessDenied, 500),  # the function's own permissions: not the caller's to retry
        (StorageError, 503),
        (ConfigurationError, 500),
        (CorruptObject, 500),
    ):
        if isinstance(exc, kind):
            return status
    return 500


def error_body(exc: Exception) -> dict[str, Any]:
    """``{"error": {"type", "field", "message"}}``; unexpected errors say only where to look."""
    field: str | None = None
    if isinstance(exc, InvalidRequest):
        field = exc.field
    elif isinstance(exc, CollectionNotFound):
        field = "collection" if exc.version is None else "version"
    elif isinstance(exc, VectorNotFound):
        field = "id"
    if isinstance(exc, KdBucketsError) and not isinstance(exc, InternalError):
        return {"error": {"type": type(exc).__name__, "field": field, "message": str(exc)}}
    request = getattr(app.lambda_context, "aws_request_id", "?")
    return {
        "error": {
            "type": "InternalError",
            "field": None,
            "message": f"internal error; see the function logs for request {request}",
        }
    }


def _respond(exc: Exception) -> Response:
    status = status_of(exc)
    if status == 500:
        logger.exception("request failed", extra={"error": type(exc).__name__})
    else:
        logger.warning("request rejected", extra={"error": type(exc).__name__, "reason": str(exc)})
    return Response(status, content_types.APPLICATION_JSON, error_body(exc))


@app.exception_handler(Exception)
def _any_error(exc: Exception) -> Response:
    return _respond(exc)


class _PowertoolsErrors:
    """Powertools' validation errors, shaped as pydantic's for ``params.to_invalid_request``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self._errors = errors

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return self._errors


@app.exception_handler(RequestValidationError)
def _invalid(exc: RequestValidationError) -> Response:
    """Name the field as the event interface does (``k``, ``items[3].id``, ``limit``)."""
    first = dict(exc.errors()[0])
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        problem = (first.get("ctx") or {}).get("error", "malformed")
        return _respond(InvalidRequest("body", f"is not valid JSON ({problem})"))
    first["loc"] = loc[1:] if loc and loc[0] in ("body", "query", "path") else loc
    if not first["loc"] and loc[:1] == ("body",):
        first["loc"] = ("body",)
    return _respond(to_invalid_request(cast(ValidationError, _PowertoolsErrors([first]))))


@app.not_found
def _no_route(exc: NotFoundError) -> Response:
    path = app.current_event.path
    return Response(
        HTTPStatus.NOT_FOUND,
        content_types.APPLICATION_JSON,
        {"error": {"type": "NotFound", "field": None, "message": f"no route {path!r}; see openapi.json"}},
    )


# -- routes ----------------------------------------------------------------------------------
@app.get(
    "/collections",
    summary="List collections",
    responses=ERROR_RESPONSES,
    tags=["collections"],
    operation_id="list_collections",
)
def list_collections() -> dict[str, Any]:
    return service.write({"operation": "list_collections"}, searcher().store)


@app.get(
    "/collections/<collection>",
    summary="Describe a version (default: the live one)",
    responses=ERROR_RESPONSES,
    tags=["collections"],
    operation_id="describe",
)
def describe(collection: Collection, version: Version = None) -> dict[str, Any]:
    store = searcher().store
    if version is None:  # (require_head refuses a bad collection name, naming the field)
        version = catalog.require_head(store, collection).head.version
    return service.write({"collection": collection, "operation": "describe", "version": version}, store)


@app.get(
    "/collections/<collection>/versions",
    summary="List versions, newest first",
    responses=ERROR_RESPONSES,
    tags=["collections"],
    operation_id="versions",
)
def versions(collection: Collection) -> dict[str, Any]:
    return service.write({"collection": collection, "operation": "versions"}, searcher().store)


@app.post(
    "/collections/<collection>/query",
    summary="k-NN search or classification",
    responses=ERROR_RESPONSES,
    tags=["read"],
    operation_id="query",
)
def query(collection: Collection, body: Annotated[QueryBody, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
    return service.query(_event(collection, body), searcher())


@app.post(
    "/collections/<collection>/fetch",
    summary="Fetch vectors by id",
    responses=ERROR_RESPONSES,
    tags=["read"],
    operation_id="fetch",
)
def fetch(collection: Collection, body: Annotated[FetchBody, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
    return service.query(_event(collection, body, "fetch"), searcher())


@app.get(
    "/collections/<collection>/vectors/<id>",
    summary="Fetch one vector by id",
    description="The id as URL text; on a collection of integer ids it is read as a decimal integer. "
    "Ids holding '/' or '?' are fetched with POST /collections/{collection}/fetch.",
    responses=ERROR_RESPONSES,
    tags=["read"],
    operation_id="fetch_one",
)
def fetch_one(
    collection: Collection,
    id: Annotated[str, Path(description="the vector's id")],
    include_vectors: Annotated[bool, Query(description="return the vector")] = True,
    include_metadata: Annotated[bool, Query(description="return the metadata")] = True,
    version: Version = None,
) -> dict[str, Any]:
    from kdbuckets import reading

    events.parse_read({"collection": collection, "operation": "fetch", "ids": [id], "version": version})
    found = reading.fetch(
        searcher().store,
        collection,
        [id],
        include_vectors=include_vectors,
        include_metadata=include_metadata,
        version=version,
        ids_from_text=True,
    )
    if not found.vectors:
        raise VectorNotFound(collection, id, found.version)
    return {"collection": collection, "version": found.version, **found.vectors[0]}


@app.get(
    "/collections/<collection>/vectors",
    summary="List vectors, a page at a time",
    description="Pass the cursor of one page to get the next; cursor null means done. The pages of "
    "one listing read the version its first page read, whatever is written meanwhile.",
    responses=ERROR_RESPONSES,
    tags=["read"],
    operation_id="list_vectors",
)
def list_vectors(
    collection: Collection,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="rows per page")] = DEFAULT_LIST_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=MAX_CURSOR_CHARS, description="from the previous page")
    ] = None,
    include_vectors: Annotated[bool, Query(description="return the vectors")] = False,
    include_metadata: Annotated[bool, Query(description="return the metadata")] = True,
    version: Version = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "collection": collection,
        "operation": "list",
        "limit": limit,
        "include_vectors": include_vectors,
        "include_metadata": include_metadata,
    }
    event.update({k: v for k, v in (("cursor", cursor), ("version", version)) if v is not None})
    return service.query(event, searcher())


@app.post(
    "/collections/<collection>/count",
    summary="Count vectors (optionally those matching a metadata filter)",
    responses=ERROR_RESPONSES,
    tags=["read"],
    operation_id="count",
)
def count(collection: Collection, body: Annotated[CountBody, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
    return service.query(_event(collection, body, "count"), searcher())


@app.post(
    "/collections/<collection>/vectors",
    summary="Upsert vectors by id",
    responses=ERROR_RESPONSES,
    tags=["write"],
    operation_id="upsert",
)
def upsert(collection: Collection, body: Annotated[UpsertBody, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
    return service.write(_event(collection, body, "upsert"), searcher().store)


@app.post(
    "/collections/<collection>/delete",
    summary="Delete vectors by id",
    responses=ERROR_RESPONSES,
    tags=["write"],
    operation_id="delete",
)
def delete(collection: Collection, body: Annotated[DeleteBody, Body()]) -> dict[str, Any]:  # type: ignore[valid-type]
    return service.write(_event(collection, body, "delete"), searcher().store)


# -- OpenAPI and the entry point -------------------------------------------------------------
def openapi_json() -> str:
    """The OpenAPI 3.1 document of these routes (committed as ``openapi.json``).

    Generated by the resolver, less Powertools' default 422 response and its schemas: this API
    answers a request that fails validation with 400 and the one error body.
    """
    document = json.loads(_generated_openapi())
    for path in document["paths"].values():
        for operation in path.values():
            operation["responses"].pop("422", None)
    schemas = document["components"]["schemas"]
    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        schemas.pop(name, None)
    return json.dumps(document, indent=2) + "\n"


def _generated_openapi() -> str:
    return app.get_openapi_json_schema(
        title="kdbuckets",
        version=__version__,
        description="Serverless vector index in S3. Every request is signed with AWS Signature "
        "Version 4 (IAM, service execute-api), as the HTTP API's default authorizer is AWS_IAM.",
        security_schemes={
            "sigv4": APIKey(
                name="Authorization",
                in_=APIKeyIn.header,
                description="AWS Signature Version 4",
                openapi_extensions={"x-amazon-apigateway-authtype": "awsSigv4"},
            )
        },
        security=[{"sigv4": []}],
    )


def _body_bytes(event: dict[str, Any]) -> int:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return len(body) * 3 // 4
    return len(body.encode("utf-8")) if isinstance(body, str) else 0


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    size = _body_bytes(event)
    if size > MAX_BODY_BYTES:
        exc = PayloadTooLarge("body", f"is {size:,} bytes; at most {MAX_BODY_BYTES:,} are accepted")
        logger.warning("request rejected", extra={"error": "PayloadTooLarge", "reason": str(exc)})
        response = {
            "statusCode": 413,
            "headers": {"Content-Type": content_types.APPLICATION_JSON},
            "body": json.dumps(error_body(exc), separators=(",", ":")),
            "isBase64Encoded": False,
        }
    else:
        response = app.resolve(event, context)
    metrics.add_metric(name="HttpRequests", unit=MetricUnit.Count, value=1)
    if response.get("statusCode", 500) >= 400:
        metrics.add_metric(name="HttpErrors", unit=MetricUnit.Count, value=1)
    return response
