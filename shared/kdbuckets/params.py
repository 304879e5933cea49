"""Validated request parameters: the base of every request model, and the build parameters.

Request models are pydantic models with strict types and unknown fields rejected. Their
failures become :class:`InvalidRequest` in :func:`to_invalid_request`, which builds the
caller's field path from pydantic's ``loc`` and phrases the problem from the error's ``type``
and ``ctx`` (never by rewording or pattern-matching pydantic's messages).

:class:`BuildParams` lives here rather than in ``builder.py`` so that the knobs of a build are
declared once, as field constraints, and both library callers (``BuildParams(bucket_size=8)``)
and build events (whose model inherits these fields) are checked by the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from . import distances, ranking, tree
from .errors import InvalidRequest

MAX_BUCKET_SIZE = 1_000_000
MAX_DEPTH = 64
MAX_SEED = 2**32 - 1
MAX_REFINE = 50
MAX_PART_BUCKETS = 1 << 20
#: A query holds the whole decoded tail (rows × dim × 4 bytes) while it scans it.
MAX_TAIL_ROWS = 65_536
PROJECTIONS = ("none", "pca")
DTYPES = ("float32", "float16")

Metric = Literal[distances.METRICS]  # type: ignore[valid-type]
Split = Literal[tree.SPLIT_RULES]  # type: ignore[valid-type]
Projection = Literal[PROJECTIONS]  # type: ignore[valid-type]
Dtype = Literal[DTYPES]  # type: ignore[valid-type]
Ranking = Literal[ranking.RANKINGS]  # type: ignore[valid-type]

#: The error type of every :func:`field_error`; its message is already in the caller's terms.
FIELD_ERROR = "kdbuckets_field"


def field_error(problem: str) -> PydanticCustomError:
    """An error for a validator that knows the problem but not the field's full path.

    Raised inside a nested model (an upsert item, a version id) it gets its path from ``loc``;
    a validator that knows the full path raises :class:`InvalidRequest` instead.
    """
    return PydanticCustomError(FIELD_ERROR, "{problem}", {"problem": problem})


class RequestModel(BaseModel):
    """Base of every request model: strict types, unknown fields rejected, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BuildParams(RequestModel):
    """Knobs of one build, with the defaults a build event gets when it names none.

    ``BuildParams(**kwargs)`` raises :class:`InvalidRequest` naming the field, as before it
    was a model; a build event's model inherits these fields so the event stays flat.
    """

    metric: Metric = "cosine"
    bucket_size: Annotated[int, Field(ge=1, le=MAX_BUCKET_SIZE)] = 1000
    max_depth: Annotated[int, Field(ge=0, le=MAX_DEPTH)] = 32
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0
    split: Split = "spread"
    projection: Projection = "pca"
    dtype: Dtype = "float16"
    refine: Annotated[int, Field(ge=0, le=MAX_REFINE)] = 10
    replicate: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    ranking: Ranking = "centroid"
    #: buckets per manifest part (kdbuckets.hierarchy); unset: one part for a single-function
    #: build, ~√(buckets / 2) for a distributed one; 0: one part
    part_buckets: Annotated[int, Field(ge=0, le=MAX_PART_BUCKETS)] | None = None
    #: rows plus deletes the unmerged tail of writes holds before a write merges it into the
    #: buckets (kdbuckets.tail); unset: automatic (merges amortised, ≤ 4 buckets' worth); 0: none
    tail_rows: Annotated[int, Field(ge=0, le=MAX_TAIL_ROWS)] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise to_invalid_request(exc) from None

    def as_dict(self) -> dict[str, Any]:
        """The build parameters only (a subclass's other fields excluded, unset options left out)."""
        out = {name: getattr(self, name) for name in BuildParams.model_fields}
        for optional in ("part_buckets", "tail_rows"):
            if out[optional] is None:
                del out[optional]
        return out


# --------------------------------------------------------------------------- error translation
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
_BOUNDS = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
_BOUND_KEYS = {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}
_JSON_KINDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
    type(None): "null",
}


def to_invalid_request(
    exc: ValidationError,
    *,
    discriminator: str | None = None,
    union: Mapping[str, type[BaseModel]] | None = None,
) -> InvalidRequest:
    """Turn pydantic's first error into ``InvalidRequest("items[3].vector", "…")``.

    With a discriminated union (``discriminator`` names the tag field, ``union`` maps each tag
    to its model), pydantic puts the tag first in ``loc``: it is dropped from the path and
    used to say e.g. that ``ids`` does not apply to operation 'compact'.
    """
    err = exc.errors(include_url=False)[0]
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, InvalidRequest):
        return cause  # raised by a validator that knows the caller's full field name
    if discriminator is not None and union is not None:
        tags = ", ".join(repr(t) for t in union)
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            event = err["input"] if isinstance(err["input"], dict) else {}
            if discriminator not in event:
                return InvalidRequest(discriminator, f"is required: one of {tags}")
            return InvalidRequest(discriminator, f"must be one of {tags}, got {_shown(event[discriminator])}")
        tag, loc = str(loc[0]), loc[1:]
        field = _path(loc)
        if len(loc) == 1 and kind == "missing":
            everywhere = all(field in model.model_fields for model in union.values())
            return InvalidRequest(field, "is required" + ("" if everywhere else f" for operation {tag!r}"))
        if len(loc) == 1 and kind == "extra_forbidden":
            owners = [t for t, model in union.items() if field in model.model_fields]
            if owners:
                only = ", ".join(repr(t) for t in owners)
                return InvalidRequest(field, f"does not apply to operation {tag!r} (only to {only})")
        return InvalidRequest(field, _problem(err, kind, ctx))
    return InvalidRequest(_path(loc), _problem(err, kind, ctx))


def _path(loc: tuple[int | str, ...]) -> str:
    """``("items", 3, "vector")`` → ``items[3].vector``; the empty path is the event itself."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "event"


def _problem(err: Any, kind: str, ctx: dict[str, Any]) -> str:
    """Phrase one pydantic error from its type and context; unknown types keep pydantic's msg."""
    value = err.get("input")
    if kind == FIELD_ERROR:
        return str(ctx["problem"])
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {_got(value)}"
    if kind in _BOUNDS:
        return f"must be {_BOUNDS[kind]} {ctx[_BOUND_KEYS[kind]]}, got {_shown(value)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}, got {_shown(value)}"
    if kind in ("too_short", "too_long"):
        limit = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        actual = ctx.get("actual_length")
        bound = "at least" if kind == "too_short" else "at most"
        noun = "item" if limit == 1 else "items"
        return f"must hold {bound} {limit} {noun}" + ("" if actual is None else f", got {actual}")
    if kind in ("string_too_short", "string_too_long"):
        bound = "at least" if kind == "string_too_short" else "at most"
        limit = ctx["min_length"] if kind == "string_too_short" else ctx["max_length"]
        return f"must be {bound} {limit} characters long"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])
    return f"is invalid: {err['msg']} (got {_got(value)})"


def _got(value: object) -> str:
    """What the caller sent, in JSON terms: ``a string "5"``, ``null``, ``a list``."""
    kind = _JSON_KINDS.get(type(value), type(value).__name__)
    return kind if value is None or isinstance(value, list | dict) else f"{kind} {_shown(value)}"


def _shown(value: object) -> str:
    """The value as JSON (``"knn"``, ``0``, ``true``), cut to 60 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
