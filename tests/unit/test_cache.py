"""ByteBudgetLRU: a byte-bounded, thread-safe LRU for decoded buckets."""

from __future__ import annotations

import threading

from kdbuckets.cache import ByteBudgetLRU


def test_get_returns_what_was_put_and_none_otherwise() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 10)
    assert cache.get("a") == "A"
    assert cache.get("b") is None
    assert len(cache) == 1
    assert cache.used_bytes == 10


def test_least_recently_used_items_are_evicted_first_to_respect_the_byte_budget() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    for key in "abcd":
        cache.put(key, key.upper(), 25)
    assert cache.used_bytes == 100
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("e", "E", 30)  # needs 30 bytes: evicts b (25) then c (25)
    assert cache.get("b") is None
    assert cache.get("c") is None
    assert [cache.get(k) for k in "ade"] == ["A", "D", "E"]
    assert cache.used_bytes == 80 <= cache.budget_bytes


def test_eviction_is_by_bytes_not_by_count() -> None:
    cache: ByteBudgetLRU[int] = ByteBudgetLRU(1000)
    for i in range(100):
        cache.put(str(i), i, 1)
    assert len(cache) == 100
    cache.put("big", -1, 950)
    assert cache.used_bytes <= 1000
    assert len(cache) == 51  # the 50 newest small items plus the big one
    assert cache.get("49") is None
    assert cache.get("50") == 50


def test_an_item_larger_than_the_whole_budget_is_not_kept_and_evicts_nothing() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 60)
    cache.put("huge", "H", 101)
    assert cache.get("huge") is None
    assert cache.get("a") == "A"
    assert cache.used_bytes == 60


def test_an_item_of_exactly_the_budget_is_kept() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 40)
    cache.put("full", "F", 100)
    assert cache.get("full") == "F"
    assert cache.get("a") is None
    assert cache.used_bytes == 100


def test_putting_an_existing_key_replaces_it_and_its_size() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "old", 70)
    cache.put("a", "new", 20)
    assert cache.get("a") == "new"
    assert cache.used_bytes == 20
    assert len(cache) == 1


def test_clear_empties_the_cache() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU(100)
    cache.put("a", "A", 10)
    cache.clear()
    assert len(cache) == 0
    assert cache.used_bytes == 0
    assert cache.get("a") is None


def test_concurrent_puts_and_gets_keep_the_accounting_exact() -> None:
    """Smoke test: 8 threads hammering one cache never break the byte accounting."""
    cache: ByteBudgetLRU[int] = ByteBudgetLRU(5_000)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(2_000):
                key = f"{(t * 7 + i) % 300}"
                cache.put(key, i, 10 + (i % 50))
                value = cache.get(f"{(i * 13) % 300}")
                assert value is None or isinstance(value, int)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert 0 < cache.used_bytes <= cache.budget_bytes
    assert cache.used_bytes == sum(size for _, size in cache._items.values())
