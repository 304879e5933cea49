"""Coalesced writes: a batch of queued upserts and deletes applied as one commit per collection.

Why: a write pays for HEAD, the manifest, the id shards and every bucket it touches, and
concurrent writers of one collection race each other on HEAD. A queue whose message group is
the collection delivers that collection's writes in order, one batch at a time; applying a
whole batch as *one* copy-on-write commit pays those costs once per batch instead of once per
message, with no compare-and-swap contention from the queue itself.

This module is that step with no queue in sight: it takes message bodies — the JSON of a direct
``upsert`` or ``delete`` event, or an upsert by reference
``{"collection", "operation": "upsert", "items_uri": "s3://…/items.jsonl[.gz]"}`` (one
``{"id", "vector", "label"?, "metadata"?}`` per line, every id given) — and says what became of
each message (:class:`Outcome`):

- ``committed``: applied by the commit that published ``version``;
- ``dead_letter``: it can never be applied (bad input, an unknown collection, an operation
  the queue does not take); ``reason`` names the field and the problem; nothing of it was written;
- ``retry``: it could not be applied now (storage errors, conflicts that outlasted the writer's
  retries, anything unexpected); the caller hands it back to the queue. Order is kept: once a
  message of a group is ``retry``, so is every later message of that group in the batch, and
  the messages before it commit without it.

Coalescing applies a group's messages in order: a later operation on an id overrides an earlier
one (upsert then delete ends deleted; delete then upsert, or two upserts, end with the last
upsert's value) — exactly what applying them one by one would leave. Every message is first
checked against the live collection (dimension, id type, labels, numeric range), so a bad one
is set aside alone; should the writer still refuse a coalesced commit (a rule only it checks,
or the collection rebuilt meanwhile), the messages are split in halves, in order, until the
bad one stands alone.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from . import catalog, events, writer
from .collection import Collection, check_vectors
from .errors import CollectionNotFound, InvalidRequest
from .manifest import Manifest
from .params import RequestModel, to_invalid_request
from .sources import (
    SourceReader,
    StoreReader,
    items_to_collection,
    jsonl_items,  # the project's one JSON Lines parser
    shard_uris,
)
from .storage import ObjectStore

#: Most items one ``items_uri`` may hold (a batch of ten such messages must fit one function).
MAX_URI_ITEMS = 50_000
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")

Status = Literal["committed", "dead_letter", "retry"]


@dataclass(frozen=True)
class Message:
    """One queued write: its id, its body (JSON text as delivered, or already decoded) and its
    message group (``None`` when the caller has none; otherwise it must be the collection)."""

    message_id: str
    body: str | bytes | dict[str, Any]
    group_id: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What became of one message. ``exception`` is kept for the caller's logs only."""

    message_id: str
    status: Status
    collection: str | None = None
    version: str | None = None
    error: str | None = None
    reason: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Commit:
    """One commit and the messages it applied (the writer's counts, after coalescing)."""

    collection: str
    version: str
    message_ids: tuple[str, ...]
    upserted: int
    deleted: int
    not_found: int
    attempts: int
    count: int

    @property
    def published(self) -> bool:
        """False when the writes changed nothing (deletes of absent ids): HEAD kept its version."""
        return self.upserted > 0 or self.deleted > 0


@dataclass(frozen=True)
class BatchReport:
    """Per-message outcomes (in input order) and the commits that applied them."""

    outcomes: list[Outcome]
    commits: list[Commit]

    def with_status(self, status: Status) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


@dataclass(frozen=True)
class Write:
    """A parsed message: what it upserts (``field`` names its items in errors) or deletes."""

    message: Message
    upserts: Collection | None
    deletes: np.ndarray | None
    field: str


class _UpsertByReference(RequestModel):
    """An upsert whose items live in S3 (a queue message holds at most 256 KiB)."""

    collection: events.CollectionName
    operation: Literal["upsert"]
    items_uri: str


# --------------------------------------------------------------------------- entry point
def apply_batch(
    store: ObjectStore, messages: Sequence[Message], *, reader: SourceReader | None = None
) -> BatchReport:
    """Apply ``messages`` as one commit per message group (= collection), in order.

    ``reader`` reads ``items_uri`` objects (default: ranged GETs through ``store``'s client).
    """
    reader = reader or StoreReader(store)
    groups: dict[str, list[int]] = {}
    for i, message in enumerate(messages):
        groups.setdefault(_group_key(message, i), []).append(i)
    outcomes: dict[int, Outcome] = {}
    commits: list[Commit] = []
    for indexes in groups.values():
        done, committed = _apply_group(store, reader, [messages[i] for i in indexes])
        outcomes.update(zip(indexes, done, strict=True))
        commits += committed
    return BatchReport([outcomes[i] for i in range(len(messages))], commits)


def _group_key(message: Message, index: int) -> str:
    """The FIFO group: the message group id, else the collection the body names, else itself."""
    if message.group_id is not None:
        return f"g:{message.group_id}"
    body = message.body
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            return f"#{index}"
    named = body.get("collection") if isinstance(body, dict) else None
    return f"c:{named}" if isinstance(named, str) else f"#{index}"


def _apply_group(
    store: ObjectStore, reader: SourceReader, messages: list[Message]
) -> tuple[list[Outcome], list[Commit]]:
    """One group's messages in order: parse each, check them against the collection, commit."""
    outcomes: dict[str, Outcome] = {}
    writes: list[Write] = []
    collection: str | None = None
    for n, message in enumerate(messages):
        try:
            name, write = _parse(message, reader)
        except InvalidRequest as exc:
            outcomes[message.message_id] = _dead(message, _named_collection(message), exc)
            continue
        except Exception as exc:  # an items_uri that could not be read now: keep the order
            _retry(outcomes, messages[n:], collection, exc)
            break
        collection = name
        writes.append(write)
    commits: list[Commit] = []
    if writes and collection is not None:
        commits = _commit(store, collection, writes, outcomes)
    return [outcomes[m.message_id] for m in messages], commits


# --------------------------------------------------------------------------- parsing
def _parse(message: Message, reader: SourceReader) -> tuple[str, Write]:
    """Validate one body into a write; :class:`InvalidRequest` names what is wrong."""
    body = _decode(message.body)
    if isinstance(body, dict) and "items_uri" in body:
        try:
            ref = _UpsertByReference.model_validate(body)
        except ValidationError as exc:
            raise to_invalid_request(exc) from None
        collection = ref.collection
        _check_group(message, collection)
        write = Write(message, _read_items(reader, ref.items_uri), None, "items_uri")
        return collection, write
    request = events.parse_write(body)
    if not isinstance(request, events.UpsertRequest | events.DeleteRequest):
        raise InvalidRequest(
            "operation",
            f"{request.operation!r} is not taken from the write queue, only 'upsert' and 'delete' "
            "(invoke the write function directly)",
        )
    _check_group(message, request.collection)
    if isinstance(request, events.UpsertRequest):
        return request.collection, Write(message, request.to_collection(), None, "items")
    return request.collection, Write(message, None, request.id_array(), "ids")


def _decode(body: str | bytes | dict[str, Any]) -> Any:
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("body", "is not UTF-8 text") from None
    if isinstance(body, str):
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise InvalidRequest("body", "is not valid JSON") from None
    return body


def _check_group(message: Message, collection: str) -> None:
    """Order is kept per message group, so a collection's writes must share one group: itself."""
    if message.group_id is not None and message.group_id != collection:
        raise InvalidRequest(
            "MessageGroupId",
            f"is {message.group_id[:128]!r}; a write's message group must be its collection "
            f"{collection!r} (writes are ordered per group)",
        )


def _read_items(reader: SourceReader, uri: str) -> Collection:
    """The items of an ``items_uri`` (one object, or a prefix of shards) as a collection."""
    name = "items_uri"
    shards = shard_uris(reader, uri, name, JSONL_SUFFIXES)
    items = jsonl_items(reader, shards, name, sharded=uri.endswith("/"))
    return items_to_collection(_with_ids(items, name), metric="l2", field=name)


def _with_ids(items: Iterable[Any], name: str) -> Iterator[Any]:
    """Refuse an item without an id: a build numbers such rows, an upsert would overwrite them."""
    for i, item in enumerate(items):
        if i >= MAX_URI_ITEMS:
            raise InvalidRequest(
                name, f"holds more than {MAX_URI_ITEMS} items; split it over several messages"
            )
        if isinstance(item, dict) and "id" not in item:
            raise InvalidRequest(f"{name}[{i}].id", "is missing; an upsert names the id of every item")
        yield item


# --------------------------------------------------------------------------- committing
def _commit(
    store: ObjectStore, collection: str, writes: list[Write], outcomes: dict[str, Outcome]
) -> list[Commit]:
    """Check every write against the live collection, then commit the rest in order."""
    try:
        manifest = catalog.read_live(store, collection).manifest
    except CollectionNotFound as exc:
        for w in writes:
            outcomes[w.message.message_id] = _dead(w.message, collection, exc)
        return []
    except Exception as exc:
        _retry(outcomes, [w.message for w in writes], collection, exc)
        return []
    valid = []
    for w in writes:
        try:
            _check_against(manifest, w)
        except InvalidRequest as exc:
            outcomes[w.message.message_id] = _dead(w.message, collection, exc)
        else:
            valid.append(w)
    commits: list[Commit] = []
    segments = deque([valid] if valid else [])
    while segments:
        segment = segments.popleft()
        try:
            upserts, deletes = coalesce(segment)
            result = writer.write(store, collection, upserts=upserts, deletes=deletes)
        except CollectionNotFound as exc:  # dropped since it was checked: nothing can apply
            for w in [w for s in (segment, *segments) for w in s]:
                outcomes[w.message.message_id] = _dead(w.message, collection, exc)
            break
        except InvalidRequest as exc:
            if len(segment) == 1:
                outcomes[segment[0].message.message_id] = _dead(segment[0].message, collection, exc)
            else:  # which message? halves, in order, until it stands alone
                half = len(segment) // 2
                segments.extendleft([segment[half:], segment[:half]])
            continue
        except Exception as exc:
            _retry(outcomes, [w.message for s in (segment, *segments) for w in s], collection, exc)
            break
        ids = tuple(w.message.message_id for w in segment)
        commits.append(
            Commit(
                collection,
                result.version,
                ids,
                result.upserted,
                result.deleted,
                result.not_found,
                result.attempts,
                result.count,
            )
        )
        for w in segment:
            outcomes[w.message.message_id] = Outcome(
                w.message.message_id, "committed", collection, result.version
            )
    return commits


def _check_against(m: Manifest, w: Write) -> None:
    """The writer's rules for one message, so that a bad one is set aside before coalescing."""
    if w.deletes is not None:
        _check_id_kind(m, w.deletes, "ids")
        return
    u = w.upserts
    assert u is not None
    if u.dim != m.dim:
        raise InvalidRequest(
            f"{w.field}[0].vector", f"has {u.dim} dimensions; collection {m.collection!r} has {m.dim}"
        )
    _check_id_kind(m, u.ids, f"{w.field}[].id")
    if (m.label_names is None) != (u.label_codes is None):
        raise InvalidRequest(
            f"{w.field}[0].label",
            f"is required: collection {m.collection!r} is labelled"
            if u.label_codes is None
            else f"is not allowed: collection {m.collection!r} has no labels",
        )
    check_vectors(u.vectors, f"{w.field}[].vector", metric=m.metric, dtype=m.dtype)


def _check_id_kind(m: Manifest, ids: np.ndarray, name: str) -> None:
    kind = "int" if ids.dtype.kind in "iu" else "str"
    if kind != m.id_kind:
        raise InvalidRequest(
            name,
            f"must be {'integers' if m.id_kind == 'int' else 'strings'} like the ids of {m.collection!r}",
        )


def coalesce(writes: Sequence[Write]) -> tuple[Collection | None, np.ndarray | None]:
    """The net effect of ``writes`` applied in order: (upserts, deleted ids), either may be None.

    The last operation on an id wins. Upserted rows keep their message's vector, label and
    metadata; label vocabularies are merged.
    """
    last: dict[Any, tuple[int, int]] = {}  # id -> (write, row), row -1 = deleted
    for n, w in enumerate(writes):
        if w.upserts is not None:
            last.update((ident, (n, row)) for row, ident in enumerate(w.upserts.ids.tolist()))
        elif w.deletes is not None:
            last.update((ident, (n, -1)) for ident in w.deletes.tolist())
    kinds = {type(ident) for ident in last}
    if len(kinds) > 1:
        raise InvalidRequest("ids", "mix integers and strings across the batch's messages")
    rows: dict[int, list[int]] = {}
    deleted = []
    for ident, (n, row) in last.items():
        if row < 0:
            deleted.append(ident)
        else:
            rows.setdefault(n, []).append(row)
    parts = [(writes[n].upserts, np.asarray(r, dtype=np.int64)) for n, r in sorted(rows.items())]
    upserts = _merge([(c, r) for c, r in parts if c is not None])
    deletes = np.array(deleted, dtype=np.int64 if kinds == {int} else str) if deleted else None
    return upserts, deletes


def _merge(parts: list[tuple[Collection, np.ndarray]]) -> Collection | None:
    """Rows ``r`` of each collection, concatenated in order, labels re-coded into one vocabulary."""
    if not parts:
        return None
    if len({c.dim for c, _ in parts}) > 1:
        raise InvalidRequest("items[].vector", "differ in dimension across the batch's messages")
    labelled = {c.label_codes is not None for c, _ in parts}
    if len(labelled) > 1:
        raise InvalidRequest("items[].label", "are given in some of the batch's messages and not in others")
    codes = names = None
    if labelled == {True}:
        names = sorted({name for c, _ in parts for name in c.label_names or []})
        lookup = {name: i for i, name in enumerate(names)}
        codes = np.concatenate(
            [
                np.array([lookup[name] for name in c.label_names or []], dtype=np.int32)[c.label_codes[r]]
                for c, r in parts
                if c.label_codes is not None
            ]
        )
    metadata = None
    if any(c.metadata is not None for c, _ in parts):
        metadata = [c.metadata[i] if c.metadata is not None else None for c, r in parts for i in r.tolist()]
    return Collection(
        vectors=np.concatenate([c.vectors[r] for c, r in parts]),
        ids=np.concatenate([c.ids[r] for c, r in parts]),
        label_codes=codes,
        label_names=names,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- outcomes
def _named_collection(message: Message) -> str | None:
    try:
        body = _decode(message.body)
    except InvalidRequest:
        return None
    named = body.get("collection") if isinstance(body, dict) else None
    return named if isinstance(named, str) else None


def _dead(message: Message, collection: str | None, exc: Exception) -> Outcome:
    return Outcome(message.message_id, "dead_letter", collection, error=type(exc).__name__, reason=str(exc))


def _retry(
    outcomes: dict[str, Outcome], messages: Iterable[Message], collection: str | None, exc: Exception
) -> None:
    """The first message failed now; it and every later one of the group go back to the queue.

    Only the first carries the exception (the cause, for the caller's logs).
    """
    for n, message in enumerate(messages):
        outcomes[message.message_id] = Outcome(
            message.message_id,
            "retry",
            collection,
            error=type(exc).__name__,
            reason=f"{type(exc).__name__}: not applied now; delivered again"
            if n == 0
            else "an earlier message of its group was not applied; delivered again after it, in order",
            exception=exc if n == 0 else None,
        )
