"""A validated in-memory collection: the one shape every source reader produces.

Validation happens here, once, before anything is written: every error names the field
(``source.vectors``, ``items[3].vector``, ``source.ids``) and the problem.
"""

from __future__ import annotations

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
    for position, char in enumerate(text):
        if char < "\x20" or char == "\x7f":
            return _control_problem(ord(char), position)
    return None


def _control_problem(code: int, position: int) -> str:
    return (
        f"contains control character U+{code:04X} at position {position}; "
        f"ids may not contain {CONTROL_CHARACTERS}"
    )


def _at(field: str, row: int) -> str:
    """``items[].id`` → ``items[7].id``; ``source.ids`` → ``source.ids[7]``."""
    return field.replace("[]", f"[{row}]", 1) if "[]" in field else f"{field}[{row}]"


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
) -> Collection:
    """Check and normalise raw arrays into a :class:`Collection`.

    ``fields`` names the three inputs in error messages, so the caller's vocabulary
    (an S3 source, a JSON Lines file, inline items) reaches the user.
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
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidRequest(f"{vf}[{row}]", "contains NaN or Inf (or a value too large for float32)")
    if metric == "cosine":
        zero = ~np.any(vectors != 0, axis=1)
        if zero.any():
            raise InvalidRequest(
                f"{vf}[{int(np.argmax(zero))}]", "is all zeros; cosine needs a nonzero vector"
            )
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
