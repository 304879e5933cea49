"""MongoDB-style metadata filters: parsed and validated once, evaluated over a whole bucket with numpy.

Grammar (JSON; the keys of one object are ANDed; ``{}`` matches every row)::

    filter := {clause, ...}
    clause := "$and": [filter, ...] | "$or": [filter, ...]
            | key: scalar                     # implicit $eq
            | key: {operator: argument, ...}  # the operators are ANDed
    operator := $eq | $ne | $in | $nin | $gt | $gte | $lt | $lte | $exists

Semantics follow MongoDB on flat documents (see :mod:`kdbuckets.metadata` for the value rules):

* ``$eq`` matches equal values of the same JSON type; numbers compare numerically (``2 == 2.0``),
  booleans are not numbers (``true != 1``); ``{"k": null}`` matches null and rows without ``k``;
* on a list value, ``$eq``/``$in`` and the range operators match when ANY element matches (two
  operators on one key may be satisfied by different elements, as in MongoDB);
* ``$ne``/``$nin`` are the exact negations of ``$eq``/``$in``, so rows without the key match them;
* ``$gt $gte $lt $lte`` take a number or a string (anything else is refused) and compare only
  values of that type, as MongoDB's type bracketing does: a number bound compares numbers, a
  string bound compares strings (Unicode code-point order, which is also UTF-8 byte order), and a
  value of any other type never satisfies it. So ``{"year": {"$gte": "2020"}}`` matches the
  *string* years "2020" and "2021" but never the *number* 2021 — the parser cannot refuse it
  (it does not know what a collection stores; a key may hold both), so the rule is stated here
  and in the README: range over numbers with number bounds;
* ``$exists: true`` matches rows holding the key, whatever its value (null and [] included).

A parsed filter is a frozen dataclass tree: immutable, hashable and comparable, so it can key a
cache; values are kept by type, so ``{"k": true}`` and ``{"k": 1}`` are different filters.
Evaluation never loops over rows: string operands become vocabulary codes by bisection (the
vocabulary is sorted), ranges become code intervals, and list elements are scattered back to
their rows with one fancy-indexed assignment.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidRequest
from .metadata import KeyColumn, MetadataColumns, TypedValues, check_key, check_scalar, type_name

MAX_DEPTH = 8  # nesting of filter objects through $and / $or; the top level is 1
MAX_CLAUSES = 64  # every operator, explicit or implicit, counts once
MAX_IN_VALUES = 256

_SCALAR = "a string, number, boolean or null"
_LOGICAL = ("$and", "$or")
_RANGES = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}
_FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$exists", *_RANGES)


@dataclass(frozen=True)
class Filter:
    """A parsed filter; :meth:`mask` says which rows of a bucket it keeps."""

    def mask(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        """(n,) bool: rows whose metadata satisfies the filter.

        ``columns is None`` (a bucket without metadata) means every key is missing in every row.
        """
        if columns is not None and columns.count != n:
            raise ValueError(f"metadata has {columns.count} rows, the bucket {n}")
        return self._match(columns, n)

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        raise NotImplementedError


def _column(columns: MetadataColumns | None, key: str) -> KeyColumn | None:
    return None if columns is None else columns.column(key)


def _any_slot(col: KeyColumn, hits: Callable[[TypedValues], np.ndarray]) -> np.ndarray:
    """(n,) rows where ``hits(values)`` holds for the scalar or for ANY list element."""
    rows = hits(col.scalars)
    if col.elements is not None and col.element_rows is not None:
        rows[col.element_rows[hits(col.elements)]] = True
    return rows


@dataclass(frozen=True)
class Membership(Filter):
    """``$eq``/``$in`` (and negated, ``$ne``/``$nin``): the key holds one of these values."""

    key: str
    numbers: tuple[float, ...] = ()
    strings: tuple[str, ...] = ()
    bools: tuple[bool, ...] = ()
    null: bool = False  # also matches rows without the key, as in MongoDB
    negate: bool = False

    def _hits(self, values: TypedValues, col: KeyColumn) -> np.ndarray:
        hit = np.zeros(values.size, dtype=bool)
        if self.numbers and values.numbers is not None:
            hit |= np.isin(values.numbers, self.numbers)
        if self.strings and values.strings is not None:
            codes = [code for code in map(col.code_of, self.strings) if code >= 0]
            if codes:
                hit |= np.isin(values.strings, codes)
        if self.bools and values.bools is not None:
            hit |= np.isin(values.bools, np.array(self.bools, dtype=np.int8))
        if self.null and values.nulls is not None:
            hit |= values.nulls
        return hit

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        col = _column(columns, self.key)
        if col is None:
            hit = np.full(n, self.null)
        else:
            hit = _any_slot(col, lambda values: self._hits(values, col))
            if self.null:
                hit |= ~col.present
        return ~hit if self.negate else hit


@dataclass(frozen=True)
class Range(Filter):
    """``$gt``/``$gte``/``$lt``/``$lte`` against a number or a string (never across the two)."""

    key: str
    op: str
    value: float | str

    def _code_interval(self, vocab: tuple[str, ...]) -> tuple[int, int]:
        """Codes [lo, hi) of the vocabulary strings that satisfy the comparison (vocab is sorted)."""
        assert isinstance(self.value, str)
        left, right = bisect.bisect_left(vocab, self.value), bisect.bisect_right(vocab, self.value)
        return {
            "$gt": (right, len(vocab)),
            "$gte": (left, len(vocab)),
            "$lt": (0, left),
            "$lte": (0, right),
        }[self.op]

    def _hits(self, values: TypedValues, col: KeyColumn) -> np.ndarray:
        if isinstance(self.value, str):
            if values.strings is None:
                return np.zeros(values.size, dtype=bool)
            lo, hi = self._code_interval(col.vocab)
            return (values.strings >= lo) & (values.strings < hi)  # lo >= 0 excludes "no string" (-1)
        if values.numbers is None:
            return np.zeros(values.size, dtype=bool)
        return _RANGES[self.op](values.numbers, self.value)  # NaN (no number) compares False

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        col = _column(columns, self.key)
        if col is None:
            return np.zeros(n, dtype=bool)
        return _any_slot(col, lambda values: self._hits(values, col))


@dataclass(frozen=True)
class Exists(Filter):
    """``$exists``: the row holds the key (any value, null included), or does not."""

    key: str
    present: bool

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        col = _column(columns, self.key)
        if col is None:
            return np.full(n, not self.present)
        return col.present.copy() if self.present else ~col.present


@dataclass(frozen=True)
class AllOf(Filter):
    """``$and`` (and the keys of one object): every clause holds; no clauses matches everything."""

    clauses: tuple[Filter, ...]

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        out = np.ones(n, dtype=bool)
        for clause in self.clauses:
            out &= clause._match(columns, n)
        return out


@dataclass(frozen=True)
class AnyOf(Filter):
    """``$or``: at least one clause holds."""

    clauses: tuple[Filter, ...]

    def _match(self, columns: MetadataColumns | None, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        for clause in self.clauses:
            out |= clause._match(columns, n)
        return out


def _membership(key: str, values: list[Any], *, negate: bool) -> Membership:
    """Group validated scalars by type, sorted and deduplicated so equal filters compare equal."""
    numbers = {float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)}
    return Membership(
        key,
        numbers=tuple(sorted(numbers)),
        strings=tuple(sorted({v for v in values if isinstance(v, str)})),
        bools=tuple(sorted({v for v in values if isinstance(v, bool)})),
        null=any(v is None for v in values),
        negate=negate,
    )


class _Parser:
    """Recursive-descent validation with a clause budget shared by the whole filter."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.clauses = 0

    def spend(self) -> None:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise InvalidRequest(self.root, f"has more than {MAX_CLAUSES} clauses")

    def filter(self, obj: object, path: str, depth: int) -> Filter:
        if not isinstance(obj, dict):
            raise InvalidRequest(path, f"must be an object, got {type_name(obj)}")
        if depth > MAX_DEPTH:
            raise InvalidRequest(path, f"nests deeper than {MAX_DEPTH} levels")
        parts: list[Filter] = []
        for key, value in obj.items():
            if isinstance(key, str) and key.startswith("$"):
                parts.append(self.logical(key, value, f"{path}.{key}", depth))
            else:
                check_key(key, path)
                parts.extend(self.field(key, value, f"{path}.{key}"))
        return parts[0] if len(parts) == 1 else AllOf(tuple(parts))

    def logical(self, op: str, value: object, path: str, depth: int) -> Filter:
        if op not in _LOGICAL:
            if op in _FIELD_OPERATORS:
                raise InvalidRequest(path, 'must be applied to a key, as in {"year": {"$gte": 2020}}')
            raise InvalidRequest(path, "is not a known operator")
        if not isinstance(value, list) or not value:
            raise InvalidRequest(path, "must be a non-empty list of filters")
        if len(value) > MAX_CLAUSES:
            raise InvalidRequest(path, f"has {len(value)} filters; at most {MAX_CLAUSES} are allowed")
        self.spend()
        subs = tuple(self.filter(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        return AllOf(subs) if op == "$and" else AnyOf(subs)

    def field(self, key: str, value: object, path: str) -> list[Filter]:
        if not isinstance(value, dict):
            self.spend()
            return [_membership(key, [check_scalar(value, path, _SCALAR)], negate=False)]
        if not value:
            raise InvalidRequest(path, "must not be an empty object; give a value or operators")
        out: list[Filter] = []
        for op, arg in value.items():
            where = f"{path}.{op}"
            if not isinstance(op, str) or not op.startswith("$"):
                raise InvalidRequest(
                    where, "is not an operator; metadata is flat, so nested objects never match"
                )
            self.spend()
            out.append(self.operator(key, op, arg, where))
        return out

    def operator(self, key: str, op: str, arg: object, where: str) -> Filter:
        if op in ("$eq", "$ne"):
            return _membership(key, [check_scalar(arg, where, _SCALAR)], negate=op == "$ne")
        if op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise InvalidRequest(where, f"must be a list of values, got {type_name(arg)}")
            if len(arg) > MAX_IN_VALUES:
                raise InvalidRequest(where, f"has {len(arg)} values; at most {MAX_IN_VALUES} are allowed")
            values = [check_scalar(v, f"{where}[{i}]", _SCALAR) for i, v in enumerate(arg)]
            return _membership(key, values, negate=op == "$nin")
        if op in _RANGES:
            if isinstance(arg, bool) or not isinstance(arg, int | float | str):
                raise InvalidRequest(where, f"must be a number or a string, got {type_name(arg)}")
            check_scalar(arg, where, _SCALAR)  # string length, finite, safe integer
            return Range(key, op, arg if isinstance(arg, str) else float(arg))
        if op == "$exists":
            if not isinstance(arg, bool):
                raise InvalidRequest(where, f"must be true or false, got {type_name(arg)}")
            return Exists(key, arg)
        if op in _LOGICAL:
            raise InvalidRequest(
                where, "is a logical operator; use it at the level of a filter, not of a key"
            )
        raise InvalidRequest(where, "is not a known operator")


def parse_filter(obj: object, field: str = "filter") -> Filter:
    """Validate a MongoDB-style filter and build its evaluation tree.

    Errors name the path, e.g. ``filter.year.$gte must be a number or a string, got list``.
    Limits: nesting depth 8, 64 clauses, 256 values per ``$in``/``$nin``, strings and keys as
    for metadata.
    """
    return _Parser(field).filter(obj, field, depth=1)
