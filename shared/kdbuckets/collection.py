"""A validated in-memory collection: the one shape every source reader produces.

Validation happens here, once, before anything is written: every error names the field
(``source.vectors``, ``items[3].vector``, ``source.ids``) and the problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import InvalidRequest

MAX_DIM = 4096
MAX_ID_BYTES = 256
MAX_LABELS = 65_536
MAX_LABEL_CHARS = 256
#: Code points an id may not contain: C0 controls and DEL. NUL matters most: numpy text arrays
#: drop trailing NULs, so "doc7" + NUL would silently become (and overwrite) "doc7".
CONTROL_CHARACTERS = "U+0000–U+001F, U+007F"
_CONTROL = re.compile("[\x00-\x1f\x7f]")

# The numeric rule, checked at every door (stored vectors here, query vectors in
# sources.vector_matrix and the searcher) so that float32 arithmetic never overflows or
# underflows: (2 × MAX_COMPONENT)² × MAX_DIM = 1.6e34, four orders of magnitude below float32's
# 3.4e38, bounds every squared norm, dot product and squared distance; a cosine vector whose
# largest component is ≥ MIN_COSINE_COMPONENT has a float32 squared norm ≥ 1e-30, far above
# float32's smallest normal (1.2e-38), so normalising it is exact to float32 precision.
#: Largest magnitude of any vector component (stored or query), for every metric.
MAX_COMPONENT = 1e15
#: Smallest largest-component magnitude of a cosine vector (smaller ones have no usable norm).
MIN_COSINE_COMPONENT = 1e-15
#: Largest component a float16 collection stores (after preparation): float16's own maximum.
FLOAT16_MAX = 65_504.0


def id_problem(value: object) -> str | None:
    """Why ``value`` (one id as JSON gives it) cannot be an id, or None if it can.

    The one rule for an id before it becomes part of a numpy array: an integer that fits
    int64, or 1 to 256 bytes of UTF-8 without control characters.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"must be a string or an integer, got {type(value).__name__}"
    if isinstance(value, int):
        return None if abs(value) < 2**63 else "must fit in int64"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    if not 1 <= size <= MAX_ID_BYTES:
        return f"must be 1 to {MAX_ID_BYTES} bytes of UTF-8"
    return control_problem(value)


def control_problem(text: str) -> str | None:
    """Why string id ``text`` holds a control character (first one, by position), or None."""
    found = _CONTROL.search(text)  # one C scan: sources check millions of ids this way
    return None if found is None else _control_problem(ord(found.group()), found.start())


def _control_problem(code: int, position: int) -> str:
    return (
        f"contains control character U+{code:04X} at position {position}; "
        f"ids may not contain {CONTROL_CHARACTERS}"
    )


def _at(field: str, row: int) -> str:
    """``items[].id`` → ``items[7].id``; ``source.ids`` → ``source.ids[7]``."""
    return field.replace("[]", f"[{row}]", 1) if "[]" in field else f"{field}[{row}]"


def check_vectors(
    vectors: np.ndarray,
    field: str,
    *,
    metric: str | None,
    dtype: str = "float32",
    finite: bool = True,
) -> None:
    """Refuse the first row that breaks the numeric rule, naming it (``field`` as for ``_at``).

    The one check for every door: stored vectors (``metric`` and storage ``dtype`` known),
    upserts (the writer, with the manifest's metric and dtype) and queries (``metric=None`` at
    parse time; the searcher knows it). Rows are reduced to their largest magnitude first, so
    the check needs O(n) memory however wide the vectors. ``finite=False`` skips NaN/Inf and
    all-zero rows, for callers that report those themselves.
    """
    if vectors.size == 0:
        return
    with np.errstate(invalid="ignore"):
        peak = np.maximum(vectors.max(axis=1), -vectors.min(axis=1)).astype(np.float64)
    usable = np.isfinite(peak)
    if finite and not usable.all():
        raise InvalidRequest(
            _at(field, int(np.argmin(usable))), "contains NaN or Inf (or a value too large for float32)"
        )
    cosine = metric == "cosine"
    if cosine:
        nonzero = peak > 0
        if finite and not nonzero.all():
            raise InvalidRequest(
                _at(field, int(np.argmin(nonzero))), "is all zeros; cosine needs a nonzero vector"
            )
        usable &= nonzero
    rules = [
        (
            peak > MAX_COMPONENT,
            f"every component must be within ±{MAX_COMPONENT:.0e} (float32 distances must stay finite)",
        )
    ]
    if cosine:
        rules.append(
            (
                peak < MIN_COSINE_COMPONENT,
                f"cosine needs a component of magnitude at least {MIN_COSINE_COMPONENT:.0e} "
                "(smaller vectors have no float32 norm)",
            )
        )
    elif dtype == "float16":  # cosine vectors are stored unit-normalised: always within float16
        rules.append(
            (
                peak > FLOAT16_MAX,
                f"a float16 collection stores components within ±{FLOAT16_MAX:.0f} only "
                '(build with "dtype": "float32" for larger values)',
            )
        )
    for bad, rule in rules:
        bad &= usable
        if bad.any():
            row = int(np.argmax(bad))
            magnitudes = np.abs(vectors[row].astype(np.float64))
            position = int(np.argmax(magnitudes))
            raise InvalidRequest(
                _at(field, row),
                f"has largest component {vectors[row, position]:.6g} at position {position}; {rule}",
            )


def check_prepared(prepared: np.ndarray, dtype: str, field: str) -> None:
    """Last guard before encoding: every prepared value is finite in the storage ``dtype``.

    Validation should make this unreachable; it exists so that no path (a future door, a
    change to ``distances.prepare``) can store an Inf or NaN that silently stops a bucket
    from ranking. Raises :class:`InvalidRequest` naming the row.
    """
    if prepared.size == 0:
        return
    limit = float(np.finfo(np.dtype(dtype)).max)
    with np.errstate(invalid="ignore"):
        peak = np.maximum(prepared.max(axis=1), -prepared.min(axis=1)).astype(np.float64)
    ok = peak <= limit  # False for NaN and Inf too
    if not ok.all():
        raise InvalidRequest(
            _at(field, int(np.argmin(ok))),
            f"cannot be stored as {dtype}: after preparation it holds a value beyond ±{limit:.6g} or NaN",
        )


@dataclass(frozen=True)
class Collection:
    """vectors (n, d) float32; ids (n,) int64 or unicode; label codes (n,) int32 + names."""

    vectors: np.ndarray
    ids: np.ndarray
    label_codes: np.ndarray | None
    label_names: list[str] | None
    metadata: list[dict | None] | None = None  # validated JSON objects, one per row

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def make_collection(
    vectors: np.ndarray,
    ids: np.ndarray | None,
    labels: np.ndarray | None,
    *,
    metric: str,
    fields: tuple[str, str, str] = ("source.vectors", "source.ids", "source.labels"),
    metadata: list[dict | None] | None = None,
    dtype: str = "float32",
) -> Collection:
    """Check and normalise raw arrays into a :class:`Collection`.

    ``fields`` names the three inputs in error messages, so the caller's vocabulary
    (an S3 source, a JSON Lines file, inline items) reaches the user. ``dtype`` is the
    collection's storage precision: a float16 collection refuses components beyond ±65,504.
    """
    vf, idf, lf = fields
    if vectors.ndim != 2:
        raise InvalidRequest(vf, f"must be a 2-D array (rows × dimensions), got shape {vectors.shape}")
    n, d = vectors.shape
    if n == 0:
        raise InvalidRequest(vf, "is empty; a collection needs at least one vector")
    if not 1 <= d <= MAX_DIM:
        raise InvalidRequest(vf, f"has {d} dimensions; supported are 1 to {MAX_DIM}")
    if vectors.dtype.kind not in "fiu":
        raise InvalidRequest(vf, f"must be numeric, got dtype {vectors.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 becomes Inf, refused by row below
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    check_vectors(vectors, vf, metric=metric, dtype=dtype)
    ids = _check_ids(ids, n, idf)
    codes, names = _check_labels(labels, n, lf)
    if metadata is not None:
        if len(metadata) != n:
            raise InvalidRequest(vf, f"has {n} rows but {len(metadata)} metadata objects")
        if all(m is None for m in metadata):
            metadata = None  # no metadata at all: buckets carry none
    return Collection(vectors=vectors, ids=ids, label_codes=codes, label_names=names, metadata=metadata)


def _check_ids(ids: np.ndarray | None, n: int, field: str) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    if ids.shape != (n,):
        raise InvalidRequest(field, f"has shape {ids.shape}; expected ({n},) to match the vectors")
    if ids.dtype.kind in "iu":
        if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
            raise InvalidRequest(field, "holds integers larger than int64")
        ids = ids.astype(np.int64)
    elif ids.dtype.kind in "US":
        ids = _as_text(ids, field)
        lengths = np.char.str_len(np.char.encode(ids, "utf-8")) if ids.size else np.zeros(0)
        if ids.size and (lengths.min() == 0 or lengths.max() > MAX_ID_BYTES):
            row = int(np.argmax((lengths == 0) | (lengths > MAX_ID_BYTES)))
            raise InvalidRequest(_at(field, row), f"must be 1 to {MAX_ID_BYTES} bytes of UTF-8")
        _check_control_characters(ids, field)
    else:
        raise InvalidRequest(field, f"must hold integers or strings, got dtype {ids.dtype}")
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dup = uniq[np.argmax(counts > 1)]
        raise InvalidRequest(field, f"must be unique; {dup.item()!r} appears {counts.max()} times")
    return ids


def _check_control_characters(ids: np.ndarray, field: str) -> None:
    """Refuse ids with control characters, naming the row.

    A numpy text array cannot tell a trailing NUL from its padding, so "doc7" + NUL is
    already "doc7" here: sources must check ids before building the array (see
    :func:`id_problem`). What is still visible — interior NULs, other controls — is refused.
    """
    if not ids.size:
        return
    codes = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), -1)
    inside = np.arange(codes.shape[1]) < np.char.str_len(ids)[:, None]
    bad = ((codes < 0x20) | (codes == 0x7F)) & inside
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        position = int(np.argmax(bad[row]))
        raise InvalidRequest(_at(field, row), _control_problem(int(codes[row, position]), position))


def _as_text(values: np.ndarray, field: str) -> np.ndarray:
    """Unicode array from str or bytes values; undecodable text is the caller's error."""
    try:
        text = np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values.astype(str)
        if text.size:
            np.char.encode(text, "utf-8")  # lone surrogates cannot be stored
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidRequest(field, "holds text that is not valid UTF-8") from None
    return text


def _check_labels(
    labels: np.ndarray | None, n: int, field: str
) -> tuple[np.ndarray | None, list[str] | None]:
    if labels is None:
        return None, None
    if labels.shape != (n,):
        raise InvalidRequest(field, f"has shape {labels.shape}; expected ({n},) to match the vectors")
    if labels.dtype.kind not in "iuUS":
        raise InvalidRequest(field, f"must hold integers or strings, got dtype {labels.dtype}")
    values = labels.astype(str) if labels.dtype.kind in "iu" else _as_text(labels, field)
    too_long = np.char.str_len(values) > MAX_LABEL_CHARS if values.size else np.zeros(0, bool)
    if too_long.any():
        raise InvalidRequest(
            _at(field, int(np.argmax(too_long))), f"is longer than {MAX_LABEL_CHARS} characters"
        )
    names, codes = np.unique(values, return_inverse=True)
    if len(names) > MAX_LABELS:
        raise InvalidRequest(field, f"has {len(names)} distinct labels; at most {MAX_LABELS} are supported")
    return codes.astype(np.int32), names.tolist()
