"""The click store: valid clicks by buyer, for last-click attribution (SPEC section 7).

``base`` holds the record (``StoredClick``) and the interface (``ClickStore``);
``redis_store`` and ``bigtable_store`` implement it.  The backends are imported
lazily (``open_click_store``): the Bigtable client takes a second to import and
a Redis deployment never needs it.
"""

from __future__ import annotations

from typing import Literal

from attribution_worker.click_store.base import (
    DEFAULT_RETENTION_MS,
    DEFAULT_WINDOW_MS,
    ClickStore,
    ClickStoreError,
    NotStorable,
    StoredClick,
)
from attribution_worker.click_store.decode import decode_click

Backend = Literal["redis", "bigtable"]


async def open_click_store(backend: Backend, *, redis_url: str | None = None,
                           bigtable_project: str = "cps", bigtable_instance: str = "cps",
                           bigtable_table: str = "clicks",
                           retention_ms: int = DEFAULT_RETENTION_MS,
                           emulator_host: str | None = None,
                           create_table: bool = False) -> ClickStore:
    """The configured backend, connected; raises ``ValueError`` naming a missing argument."""
    if backend == "redis":
        if not redis_url:
            raise ValueError("redis_url is required for the redis click store")
        from attribution_worker.click_store.redis_store import RedisClickStore

        return RedisClickStore(redis_url, retention_ms=retention_ms)
    if backend == "bigtable":
        from attribution_worker.click_store.bigtable_store import BigtableClickStore

        return await BigtableClickStore.open(
            bigtable_project, bigtable_instance, bigtable_table, retention_ms=retention_ms,
            emulator_host=emulator_host, create_table=create_table)
    raise ValueError(f"click store backend must be 'redis' or 'bigtable', not {backend!r}")


__all__ = ["DEFAULT_RETENTION_MS", "DEFAULT_WINDOW_MS", "Backend", "ClickStore",
           "ClickStoreError", "NotStorable", "StoredClick", "decode_click", "open_click_store"]
