"""Exact k-NN over fetched buckets: the scoring kernel of the query path.

(Being extracted from ``searcher.py``; for now it holds the per-request size bound that the
request model and the searcher both enforce.)
"""

from __future__ import annotations

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
