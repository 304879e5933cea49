"""Exact k-NN over fetched buckets: the scoring kernel of the query path.

Streaming top-k, so that memory depends on ``nq × k`` (capped by :data:`MAX_RESULTS`) and on
a bucket's size, never on ``nq × probes × k`` or ``nq × k × d``:

- :class:`TopK` keeps, per query, the k best candidates seen so far (selection score, bucket,
  row, dedup key with an explicit has-key mask, validity);
- :func:`score_bucket` scores one bucket against the queries that probe it, in query blocks
  of at most :data:`BLOCK_SCORES` scores, and merges each block's top k into the running one;
- :meth:`TopK.resolve` computes the exact float64 distance, id, label and metadata of the
  running winners while their buckets are still held (once per fetch round), so that a
  round's buckets can be released before the next round is read;
- :func:`plan_rounds` splits the buckets a request needs into rounds of at most
  :data:`ROUND_BYTES` decoded bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import distances
from .bucket import Bucket, dedup_keys
from .errors import InvalidRequest

#: Largest ``len(vectors) × k`` of one request: bounds both the work and the response, which
#: must fit Lambda's 6 MB payload (≈ 55 bytes of JSON per result without metadata).
MAX_RESULTS = 50_000
#: The same bound when every result carries its metadata (up to 1 KB of JSON each).
MAX_RESULTS_WITH_METADATA = 2_000


def check_result_count(n_queries: int, k: int, *, include_metadata: bool = False) -> None:
    """Reject a request whose ``len(vectors) × k`` exceeds what one response can carry."""
    limit = MAX_RESULTS_WITH_METADATA if include_metadata else MAX_RESULTS
    if n_queries * k > limit:
        extra = " with include_metadata" if include_metadata else ""
        raise InvalidRequest(
            "vectors, k",
            f"ask for {n_queries} × {k} = {n_queries * k:,} results; at most {limit:,} per request{extra} "
            "(send fewer vectors per request or a smaller k)",
        )


#: Decoded bytes of buckets one fetch round may hold (a request reads in rounds beyond this).
ROUND_BYTES = 128 << 20
#: Scores (float32) computed at once for one bucket: query block × bucket rows.
BLOCK_SCORES = 1 << 21
#: float64 elements per block of exact re-scoring (pairs × d).
EXACT_BLOCK = 1 << 20
#: Centre a bucket before scoring when its centre holds more than this share of its rows'
#: squared norm: the float32 products would otherwise lose the digits that rank its rows.
CENTRE_SHARE = 0.5
#: Rounding bound of a float32 dot product of length d, per unit of d·|q|·|v| (2 × 2⁻²⁴: the
#: products and the sums). A row whose float32 score is within this of the k-th best may
#: belong in the top k: such a query's block is re-scored in float64 (rare on real data).
F32_DOT_ERROR = 2.0**-23


def plan_rounds(
    needed: np.ndarray, sizes: np.ndarray, dtype: str, budget: int | None = None
) -> list[np.ndarray]:
    """Split bucket ids ``needed`` into consecutive rounds of at most ``budget`` decoded bytes.

    ``sizes`` are the stored sizes (the manifest's); float16 buckets decode to twice as much.
    Every round holds at least one bucket, and a request that fits the budget is one round,
    i.e. one parallel round of GETs.
    """
    budget = ROUND_BYTES if budget is None else budget
    needed = np.asarray(needed, dtype=np.int64)
    if needed.size == 0:
        return []
    decoded = sizes[needed].astype(np.int64) * (2 if dtype == "float16" else 1)
    rounds: list[np.ndarray] = []
    start, total = 0, 0
    for i, size in enumerate(decoded.tolist()):
        if i > start and total + size > budget:
            rounds.append(needed[start:i])
            start, total = i, 0
        total += size
    rounds.append(needed[start:])
    return rounds


def group_by_bucket(queries: np.ndarray, buckets: np.ndarray) -> dict[int, np.ndarray]:
    """Query indices per bucket id, from parallel arrays of (query, bucket) pairs."""
    order = np.argsort(buckets, kind="stable")
    ids, starts = np.unique(buckets[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return {
        b: queries[order[s:e]] for b, s, e in zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True)
    }


class TopK:
    """The k best candidates per query seen so far in one request; memory O(nq × k).

    Candidates are ranked by selection score, then bucket, then row (deterministic ties).
    Absence is explicit (``valid``), and so is the dedup key (``has_key``): no value of an id
    or key is reserved to mean "none", so every int64 id, -1 included, is a real id.
    """

    #: ranking state, carried through every merge
    _CORE = ("score", "ref", "key", "has_key", "valid", "group")
    #: filled by resolve() while the candidate's bucket is held; carried only once resolved
    _RESOLVED = ("resolved", "exact", "label", "ids", "meta")

    def __init__(self, nq: int, k: int, grouping: Grouping | None = None) -> None:
        self.k = k
        #: with ``grouping``, at most ``group_size`` candidates per group value are kept (a
        #: candidate with that many better ones in its group can never be returned)
        self.grouping = grouping
        shape = (nq, k)
        self.group = np.full(shape, -1, np.int64)  # group code (Grouping.codes), -1 = none
        self.score = np.full(shape, np.inf)  # float64: base + delta, see distances.selection
        self.ref = np.zeros(shape, np.int64)  # bucket << 32 | row
        self.key = np.zeros(shape, np.int64)
        self.has_key = np.zeros(shape, bool)
        self.valid = np.zeros(shape, bool)
        self.resolved = np.zeros(shape, bool)
        self.exact = np.full(shape, np.inf)  # unclamped, see distances.exact_pairs
        self.label = np.full(shape, -1, np.int32)
        self.ids = np.full(shape, None, dtype=object)
        self.meta = np.full(shape, None, dtype=object)

    @property
    def bucket(self) -> np.ndarray:
        return self.ref >> 32

    @property
    def row(self) -> np.ndarray:
        return self.ref & 0xFFFFFFFF

    def found(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Number of candidates held for each query of ``rows``."""
        return self.valid[rows].sum(axis=1)

    def groups_found(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Number of distinct group values among the candidates held for each query of ``rows``."""
        codes = np.sort(np.where(self.valid[rows], self.group[rows], -1), axis=1)
        first = np.ones(codes.shape, bool)
        first[:, 1:] = codes[:, 1:] != codes[:, :-1]
        return (first & (codes >= 0)).sum(axis=1)

    def merge(
        self,
        rows: np.ndarray,
        *,
        score: np.ndarray,
        bucket: np.ndarray,
        row: np.ndarray,
        key: np.ndarray,
        has_key: np.ndarray,
        valid: np.ndarray,
        group: np.ndarray | None = None,
    ) -> None:
        """Merge new candidates (len(rows), m) into the running top k of the queries ``rows``.

        A vector met twice (replicated into two buckets, or its bucket scored twice for a
        query) keeps its best-ranked copy.
        """
        n, m = len(rows), score.shape[1]
        width = self.k + m
        new = {
            "score": score,
            "ref": (np.asarray(bucket, np.int64) << 32) | row,
            "key": key,
            "has_key": has_key,
            "valid": valid,
            "group": np.int64(-1) if group is None else group,
        }
        cat = {
            f: np.concatenate([getattr(self, f)[rows], np.broadcast_to(new[f], (n, m))], axis=1)
            for f in self._CORE
        }
        # Identity of a candidate: its dedup key when it has one, else (bucket, row) — two
        # separate namespaces told apart by has_key, so no key value can collide with "none".
        ident = np.where(cat["has_key"], cat["key"], cat["ref"])
        valid = cat["valid"]
        base = (np.arange(n) * width)[:, None]
        order = (
            np.lexsort((cat["ref"], cat["score"], ident, cat["has_key"], ~valid), axis=-1) + base
        ).ravel()
        s_ident, s_keyed, s_valid = ident.ravel()[order], cat["has_key"].ravel()[order], valid.ravel()[order]
        dup = np.zeros(order.shape, bool)
        dup[1:] = s_valid[1:] & s_valid[:-1] & (s_keyed[1:] == s_keyed[:-1]) & (s_ident[1:] == s_ident[:-1])
        dup[base.ravel()] = False  # a row's first entry has no predecessor in that row
        valid.ravel()[order] = s_valid & ~dup
        if self.grouping is not None:
            _cap_groups(cat["group"], cat["score"], cat["ref"], valid, self.grouping.size)
        best = (np.lexsort((cat["ref"], cat["score"], ~valid), axis=-1)[:, : self.k] + base).ravel()
        for f in self._CORE:
            getattr(self, f)[rows] = cat[f].ravel()[best].reshape(n, self.k)
        if self.resolved[rows].any():  # else every resolved field is at its default, and stays
            pad = {"resolved": False, "exact": np.inf, "label": -1, "ids": None, "meta": None}
            for f in self._RESOLVED:
                old = getattr(self, f)
                merged = np.concatenate([old[rows], np.full((n, m), pad[f], dtype=old.dtype)], axis=1)
                old[rows] = merged.ravel()[best].reshape(n, self.k)

    def resolve(self, queries: np.ndarray, buckets: dict[int, Bucket], metric: str) -> None:
        """Exact distance, label, id and metadata of every unresolved candidate.

        Called while ``buckets`` (holding every unresolved candidate) are in memory; float64
        work is done in blocks of :data:`EXACT_BLOCK` elements.
        """
        qi, slot = np.nonzero(self.valid & ~self.resolved)
        if qi.size == 0:
            return
        refs = self.ref[qi, slot]
        of_bucket = refs >> 32
        for b, idx in group_by_bucket(np.arange(qi.size), of_bucket).items():
            bucket = buckets[b]
            q_b, s_b = qi[idx], slot[idx]
            rows = refs[idx] & 0xFFFFFFFF
            step = max(1, EXACT_BLOCK // max(1, queries.shape[1]))
            for start in range(0, rows.size, step):
                part = slice(start, start + step)
                self.exact[q_b[part], s_b[part]] = distances.exact_pairs(
                    queries[q_b[part]], bucket.vectors[rows[part]], metric, clamp=False
                )
            if bucket.labels is not None:
                self.label[q_b, s_b] = bucket.labels[rows]
            self.ids[q_b, s_b] = _objects(bucket.ids.take(rows))
            if bucket.metadata is not None:
                self.meta[q_b, s_b] = _objects(bucket.metadata.take(rows))
        self.resolved[qi, slot] = True

    def finish(self, metric: str) -> tuple[np.ndarray, list[list[Any]], np.ndarray, list[list[Any]]]:
        """(distances, ids, label codes, metadata), nearest first by exact distance.

        Ties are broken by bucket, then row, so every searcher returns the same order; missing
        results (fewer than k found) are ``inf`` / None / -1 at the end of their row.
        """
        if not np.all(self.resolved[self.valid]):
            raise AssertionError("resolve() must run before finish()")
        exact = np.where(self.valid, self.exact, np.inf)
        order = np.lexsort((self.ref, exact, ~self.valid), axis=-1)  # ref: bucket, then row
        dist = np.take_along_axis(exact, order, axis=1)
        if metric == "cosine":  # ranked unclamped (see distances.exact_pairs), reported >= 0
            dist = np.maximum(dist, 0.0)
        labels = np.where(self.valid, self.label, -1).astype(np.int32)
        labels = np.take_along_axis(labels, order, axis=1)
        #: group code of each returned candidate, in the same order (-1 where missing)
        self.finished_groups = np.take_along_axis(np.where(self.valid, self.group, -1), order, axis=1)
        ids = np.take_along_axis(np.where(self.valid, self.ids, None), order, axis=1).tolist()
        meta = np.take_along_axis(np.where(self.valid, self.meta, None), order, axis=1).tolist()
        return dist, ids, labels, meta


def _cap_groups(group: np.ndarray, score: np.ndarray, ref: np.ndarray, valid: np.ndarray, size: int) -> None:
    """Invalidate (in place) every candidate with ``size`` better valid ones of its group, per row."""
    n, width = group.shape
    base = (np.arange(n) * width)[:, None]
    order = (np.lexsort((ref, score, group, ~valid), axis=-1) + base).ravel()
    g, v = group.ravel()[order], valid.ravel()[order]
    start = np.ones(order.shape, bool)
    start[1:] = (g[1:] != g[:-1]) | (v[1:] != v[:-1])
    start[base.ravel()] = True
    idx = np.arange(order.size)
    run_start = np.maximum.accumulate(np.where(start, idx, 0))
    valid.ravel()[order] = v & (idx - run_start < size)


@dataclass
class Exclusion:
    """Dedup keys each query must never return: ``keys`` (nq, e) int64, ``mask`` (nq, e) bool.

    Excluded candidates are dropped before they enter the top k (each bucket offers e more
    candidates per query instead), so a query still gets k results when the data has them.
    """

    keys: np.ndarray
    mask: np.ndarray

    @classmethod
    def of(cls, per_query: list[list[int]]) -> Exclusion:
        """From a list (one per query) of keys to exclude."""
        width = max(1, max((len(k) for k in per_query), default=0))
        keys = np.zeros((len(per_query), width), np.int64)
        mask = np.zeros((len(per_query), width), bool)
        for i, ks in enumerate(per_query):
            keys[i, : len(ks)] = ks
            mask[i, : len(ks)] = True
        return cls(keys, mask)

    @property
    def width(self) -> int:
        return int(self.mask.sum(axis=1).max(initial=0))

    def hits(self, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """(len(queries), m) bool: which candidate ``keys`` (len(queries), m) are excluded."""
        ek, em = self.keys[queries], self.mask[queries]
        return ((keys[:, :, None] == ek[:, None, :]) & em[:, None, :]).any(axis=2)


class Grouping:
    """Results grouped by one metadata key: codes for its values, seen in this request.

    A row without the key belongs to no group and is never returned by a grouped search. A
    value is compared as its canonical JSON (a list of tags is one value).
    """

    def __init__(self, key: str, size: int) -> None:
        self.key = key
        self.size = size
        self.values: list[Any] = []
        self._codes: dict[str, int] = {}

    def codes(self, bucket: Bucket, rows: np.ndarray) -> np.ndarray:
        """Group code of each candidate ``rows`` (any shape) of ``bucket``; -1 without the key.

        Only candidates are decoded (at most the pool width per query and bucket).
        """
        out = np.full(rows.shape, -1, np.int64)
        if bucket.metadata is None or bucket.metadata.column(self.key) is None:
            return out
        flat = rows.ravel()
        uniq, inverse = np.unique(flat, return_inverse=True)
        codes = np.full(uniq.shape, -1, np.int64)
        for j, meta in enumerate(bucket.metadata.take(uniq)):
            if meta is not None and self.key in meta:
                text = json.dumps(meta[self.key], sort_keys=True)
                code = self._codes.get(text)
                if code is None:
                    code = self._codes[text] = len(self.values)
                    self.values.append(meta[self.key])
                codes[j] = code
        return codes[inverse].reshape(rows.shape)


def candidate_keys(bucket: Bucket, rows: np.ndarray) -> np.ndarray:
    """Dedup key of each candidate ``rows`` (any shape): stored, or derived from the ids."""
    if bucket.keys is not None:
        return bucket.keys[rows]
    if bucket.ids.ints is not None:
        return bucket.ids.ints[rows]
    flat = rows.ravel()
    uniq, inverse = np.unique(flat, return_inverse=True)
    return dedup_keys(np.array(bucket.ids.take(uniq), dtype=str))[inverse].reshape(rows.shape)


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (never reinterpreted as nested sequences)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):  # k winners per bucket, not n vectors
        out[i] = v
    return out


def score_bucket(
    top: TopK,
    queries: np.ndarray,
    rows: np.ndarray,
    index: int,
    bucket: Bucket,
    metric: str,
    centroid: np.ndarray,
    mask: np.ndarray | None = None,
    exclude: Exclusion | None = None,
) -> None:
    """Score bucket ``index`` against the prepared queries ``rows`` and merge into ``top``.

    ``exclude`` names per query the keys never to return: each query takes as many more
    candidates from the bucket as it may exclude, so its top k is complete without them.

    ``mask`` (bool per bucket row) keeps only the rows a metadata filter accepts; only those
    are scored. ``centroid`` (the manifest's, near the bucket's rows) is the centre scores are
    taken relative to when the bucket lies far from the origin (see distances.selection).
    Queries are taken in blocks of at most :data:`BLOCK_SCORES` / rows, whatever their number.
    """
    if bucket.count == 0 or rows.size == 0:
        return
    subset = None if mask is None or mask.all() else np.flatnonzero(mask)
    if subset is not None and subset.size == 0:
        return
    sq = bucket.sq_norms()
    centre: np.ndarray | None = None
    c = centroid.astype(np.float64)
    if float(c @ c) > CENTRE_SHARE * float(sq.mean(dtype=np.float64)):
        centre = centroid.astype(np.float32)
    vectors = bucket.vectors if subset is None else bucket.vectors[subset]
    if centre is not None:
        vectors = vectors - centre
        sq_norms = np.einsum("ij,ij->i", vectors, vectors)
    else:
        sq_norms = sq if subset is None else sq[subset]
    n = vectors.shape[0]
    kk = min(top.k + (exclude.width if exclude is not None else 0), n)
    radius = float(np.sqrt(np.max(sq_norms, initial=0.0, where=np.isfinite(sq_norms))))
    keys = bucket.keys
    step = max(1, BLOCK_SCORES // n)
    for start in range(0, rows.size, step):
        block = rows[start : start + step]
        base, delta = distances.selection(queries[block], vectors, metric, centre, sq_norms)
        if kk < n:
            picked = np.argpartition(delta, kk - 1, axis=1)[:, :kk]
            chosen = np.take_along_axis(delta, picked, axis=1).astype(np.float64)
            unsure = _ambiguous(delta, chosen, queries[block], base, radius, metric, centre is not None)
            if unsure.any():  # float32 cannot order these rows: decide them in float64
                exact = distances.selection64(queries[block[unsure]], vectors, metric, centre)
                fix = np.argpartition(exact, kk - 1, axis=1)[:, :kk]
                picked = picked.copy()
                picked[unsure] = fix
                chosen[unsure] = np.take_along_axis(exact, fix, axis=1)
        else:
            picked = np.broadcast_to(np.arange(n), delta.shape)
            chosen = delta.astype(np.float64)
        del delta, base, chosen
        row = picked if subset is None else subset[picked]
        # Candidates of different buckets are compared by their float64 distance: two
        # buckets' float32 scores carry different rounding, which may exceed a small gap.
        score = _exact_scores(queries[block], bucket.vectors, row, metric)
        shape = score.shape
        valid = np.ones(shape, bool)
        if exclude is not None:
            valid &= ~exclude.hits(block, candidate_keys(bucket, row))
        group = None
        if top.grouping is not None:
            group = top.grouping.codes(bucket, row)
            valid &= group >= 0
        top.merge(
            block,
            score=score,
            bucket=np.broadcast_to(np.int64(index), shape),
            row=row,
            key=keys[row] if keys is not None else np.broadcast_to(np.int64(0), shape),
            has_key=np.broadcast_to(keys is not None, shape),
            valid=valid,
            group=group,
        )


def _ambiguous(
    delta: np.ndarray,
    chosen: np.ndarray,
    queries: np.ndarray,
    base: np.ndarray,
    radius: float,
    metric: str,
    centred: bool,
) -> np.ndarray:
    """Queries whose k-th best float32 score is within rounding error of a row left out.

    The error of a float32 score is bounded by d·2⁻²³·|q'|·|v'| (and ‖v'‖² for l2), with q', v'
    the query and rows relative to the centre; rows scoring within twice that of the k-th best
    cannot be ordered in float32, so an exact search must decide them in float64.
    """
    d = queries.shape[1]
    if metric == "l2":
        q_norm = np.sqrt(np.maximum(base, 0.0))
        error = F32_DOT_ERROR * d * (2.0 * q_norm * radius + radius * radius)
    else:
        q_norm = np.linalg.norm(queries.astype(np.float64), axis=1)
        error = F32_DOT_ERROR * d * q_norm * radius
    kth = chosen.max(axis=1)
    near = np.count_nonzero(delta <= (kth + 2.0 * error)[:, None], axis=1)
    return near > chosen.shape[1]


#: Elements of the float64 (queries × candidates × d) block used to score the candidates.
PAIR_BUDGET = 1 << 22


def _exact_scores(queries: np.ndarray, vectors: np.ndarray, row: np.ndarray, metric: str) -> np.ndarray:
    """float64 distance (unclamped for cosine) of each query to each of its candidate rows."""
    out = np.empty(row.shape, np.float64)
    per = max(1, PAIR_BUDGET // max(1, row.shape[1] * queries.shape[1]))
    for start in range(0, len(queries), per):
        stop = start + per
        out[start:stop] = distances.exact_pairs(
            queries[start:stop, None, :], vectors[row[start:stop]], metric, clamp=False
        )
    return out
