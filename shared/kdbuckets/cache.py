"""Warm-container caches: decoded buckets in an LRU bounded by bytes.

Buckets are immutable and named by their content hash, so a cached bucket can never be stale:
the cache needs no invalidation, only a memory bound. A Lambda container keeps it between
invocations, which is what makes a second query on the same data cheap.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteBudgetLRU(Generic[V]):
    """Thread-safe LRU mapping whose total size (as reported by the caller) stays ≤ budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: str, value: V, size: int) -> None:
        """Insert ``value``; items larger than the whole budget are simply not kept."""
        if size > self.budget_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._items[key] = (value, size)
            self._used += size
            while self._used > self.budget_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._used -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0
