"""How large a collection one build function can take, and the error that says so early.

A single-function build holds the vectors once in float32 plus one rotated copy while the
tree is grown: peak RSS ≈ :data:`BASE_MB` + :data:`PER_FLOAT32_BYTE` × the float32 bytes
(fitted by ``python -m bench.build_memory`` on WordNet 114,659 × 384 and 500,000 × 384
synthetic vectors). A build that would not fit is refused from the source's header — before
anything is read or allocated — with an error pointing at the distributed build, instead of
dying of an out-of-memory kill that tells the caller nothing.
"""

from __future__ import annotations

from .errors import InvalidRequest

BASE_MB = 157.0
PER_FLOAT32_BYTE = 2.07
#: Share of the function's memory a build plans to use (the rest: allocator slack, boto3 buffers).
PLANNED_SHARE = 0.9


def max_vector_bytes(memory_mb: int) -> int:
    """Float32 bytes of vectors a build function of ``memory_mb`` takes."""
    return max(0, int((memory_mb * PLANNED_SHARE - BASE_MB) * (1 << 20) / PER_FLOAT32_BYTE))


def check_fits(rows: int, dim: int, memory_mb: int | None, field: str) -> None:
    """Refuse ``rows`` × ``dim`` vectors that a build function of ``memory_mb`` cannot hold."""
    if memory_mb is None:
        return
    need = rows * dim * 4
    limit = max_vector_bytes(memory_mb)
    if need > limit:
        raise InvalidRequest(
            field,
            f"holds {rows:,} vectors of {dim} dimensions ({need / 2**30:.2f} GiB as float32); a build "
            f"function of {memory_mb:,} MB takes at most {limit // (dim * 4):,} of them — build this "
            "collection with the state machine (BuildStateMachine; README, 'Distributed build')",
        )
