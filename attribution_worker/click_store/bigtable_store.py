"""The click store on Google Bigtable (HBase data model): the scale-out backend.

One table, one column family ``c`` with a max-age GC rule of ``retention``
(HBase: family TTL), one column ``c:j`` holding the click's compact JSON
(``StoredClick.to_bytes``), cell timestamp = click ts (ms; Bigtable counts
microseconds with ms granularity, HBase counts ms).  Two rows per click:

* index row ``b#{buyer}#{shop}#{reverse_ts:013d}#{inverted_click_id}``, with
  ``shop`` = ``*`` for a site-wide link (shop ids match ``[A-Za-z0-9._:-]``, so
  ``*`` and ``#`` never occur in one) and ``%``/``#`` in the opaque buyer key
  percent-escaped (no buyer's prefix is another's).  ``reverse_ts`` =
  9,999,999,999,999 - ts, so one buyer's clicks for one shop sort newest first;
  ``inverted_click_id`` maps each hex digit d to f-d, so within one millisecond
  the greatest click id sorts first (the same tie-break as the Redis backend).
  "The latest click by B for S at or before T within W" is ONE row-range scan
  with limit 1: from ``b#B#S#{reverse_ts(T)}`` (inclusive) to
  ``b#B#S#{reverse_ts(T - W)}$`` (exclusive; ``$`` follows ``#``).
* by-id row ``c#{click_id reversed}``: ``get`` is one point read.  Click ids
  start with their timestamp, so unreversed they would send every write to the
  tablet holding "now" (a hotspot); reversed they start with 64 random bits.

Idempotency is natural: a replayed click writes the same cells (same row key,
column, timestamp and value) again.  Writes are one ``MutateRows`` call per
10,000 clicks (two entries each), retried by the client because every cell
has an explicit timestamp.  Nothing here is Bigtable-specific beyond the
client: the keys, the family TTL and the range scan carry over to HBase unchanged.

Expiry: the GC rule removes cells ``retention`` after their click, eventually
(Bigtable collects garbage within about a week; until then expired cells are
still readable), and the local emulator only runs max-age garbage collection
after a column-family update.  So reads do not depend on GC: every read
carries a timestamp-range filter that drops cells older than ``now -
retention``, exactly the clicks the Redis backend would have expired.

Throughput: bound by the Python client, not the server: proto-plus
marshalling costs ~70 us of CPU per row (~150 us per click), so one process
writes ~6,000 clicks/s against the emulator on the 2-core dev VM (concurrent
``MutateRows`` calls do not help: the client is CPU-bound).  Scale out with
more persister processes in the consumer group (one partition or more each);
a Bigtable node takes ~10,000 such rows/s of writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud.bigtable.data import (
    BigtableDataClientAsync,
    ReadRowsQuery,
    RowMutationEntry,
    RowRange,
    SetCell,
)
from google.cloud.bigtable.data.exceptions import MutationsExceptionGroup
from google.cloud.bigtable.data.row_filters import (
    CellsColumnLimitFilter,
    RowFilter,
    RowFilterChain,
    TimestampRangeFilter,
)

from attribution_worker.click_store.base import (
    CLICK_ID_PATTERN,
    DEFAULT_RETENTION_MS,
    MAX_TS_MS,
    ClickStoreError,
    StoredClick,
    check_lookup,
    check_retention,
    index_suffix,
    retained,
    window_bounds,
)
from contracts.links import ID_PATTERN

FAMILY = "c"
QUALIFIER = b"j"
EMULATOR_ENV = "BIGTABLE_EMULATOR_HOST"
# Two entries per click; MutateRows takes at most 100,000 mutations per call.
WRITE_CHUNK = 10_000
_INVERT_HEX = str.maketrans("0123456789abcdef", "fedcba9876543210")


def reverse_ts(ts_ms: int) -> int:
    return MAX_TS_MS - ts_ms


def index_prefix(buyer_key: str, shop_id: str | None) -> bytes:
    return f"b#{index_suffix(buyer_key, shop_id)}#".encode()


def index_row_key(click: StoredClick) -> bytes:
    return (index_prefix(click.buyer_key, click.shop_id)
            + f"{reverse_ts(click.ts_ms):013d}#{click.click_id.translate(_INVERT_HEX)}".encode())


def id_row_key(click_id: str) -> bytes:
    return f"c#{click_id[::-1]}".encode()


def latest_range(buyer_key: str, shop_id: str | None, at_ms: int, window_ms: int) -> RowRange:
    """The index rows of clicks with ``at_ms - window_ms <= ts <= at_ms``, newest first."""
    low, high = window_bounds(at_ms, window_ms)
    prefix = index_prefix(buyer_key, shop_id)
    return RowRange(start_key=prefix + f"{reverse_ts(high):013d}".encode(),
                    end_key=prefix + f"{reverse_ts(low):013d}$".encode())


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@contextlib.contextmanager
def _emulator_env(emulator_host: str | None) -> Iterator[None]:
    """Point the Google clients built inside at ``emulator_host`` (they read the env once)."""
    if emulator_host is None:
        yield
        return
    saved = os.environ.get(EMULATOR_ENV)
    os.environ[EMULATOR_ENV] = emulator_host
    try:
        with warnings.catch_warnings():
            # "Connecting to Bigtable emulator at ...": we know.
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        if saved is None:
            os.environ.pop(EMULATOR_ENV, None)
        else:
            os.environ[EMULATOR_ENV] = saved


def ensure_table(project: str, instance: str, table: str, *, retention_ms: int,
                 emulator_host: str | None = None) -> None:
    """Create ``table`` with family ``c`` (max-age GC = retention), or fix the family's rule.

    Blocking (the admin client is synchronous): call it through
    ``asyncio.to_thread`` from async code.  Needs table-admin rights; workers
    that only read and write can skip it when the table is provisioned.
    """
    from google.cloud import bigtable
    from google.cloud.bigtable.column_family import MaxAgeGCRule

    with _emulator_env(emulator_host):
        # The admin API is the legacy client's, which has no type annotations.
        client: Any = bigtable.Client(project=project, admin=True)  # type: ignore[no-untyped-call]
    max_age = datetime.timedelta(milliseconds=check_retention(retention_ms))
    rule = MaxAgeGCRule(max_age)  # type: ignore[no-untyped-call]
    admin_table = client.instance(instance).table(table)
    try:
        if not admin_table.exists():
            with contextlib.suppress(api_exceptions.AlreadyExists):  # another worker won
                admin_table.create(column_families={FAMILY: rule})
                return
        family = admin_table.list_column_families().get(FAMILY)
        if family is None:
            admin_table.column_family(FAMILY, rule).create()
        elif family.gc_rule != rule:
            admin_table.column_family(FAMILY, rule).update()
    except api_exceptions.GoogleAPIError as err:
        raise ClickStoreError(f"bigtable admin on {project}/{instance}/{table}: {err}") from None
    finally:
        client.close()


def family_max_age(project: str, instance: str, table: str, *,
                   emulator_host: str | None = None) -> datetime.timedelta | None:
    """The max-age GC rule of family ``c`` (None: no such family or rule). Blocking."""
    from google.cloud import bigtable

    with _emulator_env(emulator_host):
        client: Any = bigtable.Client(project=project, admin=True)  # type: ignore[no-untyped-call]
    try:
        family = client.instance(instance).table(table).list_column_families().get(FAMILY)
    except api_exceptions.GoogleAPIError as err:
        raise ClickStoreError(f"bigtable admin on {project}/{instance}/{table}: {err}") from None
    finally:
        client.close()
    max_age = getattr(family.gc_rule, "max_age", None) if family is not None else None
    return max_age if isinstance(max_age, datetime.timedelta) else None


class BigtableClickStore:
    """``ClickStore`` on one Bigtable table; build it with ``await BigtableClickStore.open()``."""

    def __init__(self, client: BigtableDataClientAsync, table: Any, *,
                 retention_ms: int = DEFAULT_RETENTION_MS, timeout_s: float = 10.0,
                 clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.retention_ms = check_retention(retention_ms)
        self.timeout_s = timeout_s
        self._client = client
        self._table = table
        self._clock_ms = clock_ms

    @classmethod
    async def open(cls, project: str, instance: str, table: str, *,
                   retention_ms: int = DEFAULT_RETENTION_MS, emulator_host: str | None = None,
                   create_table: bool = False, timeout_s: float = 10.0,
                   clock_ms: Callable[[], int] = wall_clock_ms) -> BigtableClickStore:
        """Connect (inside a running loop); ``emulator_host`` = ``HOST:PORT`` of an emulator.

        Without ``emulator_host`` the client honours ``BIGTABLE_EMULATOR_HOST``
        or else uses Application Default Credentials against Bigtable itself.
        """
        if create_table:
            await asyncio.to_thread(ensure_table, project, instance, table,
                                    retention_ms=retention_ms, emulator_host=emulator_host)
        with _emulator_env(emulator_host):
            client = BigtableDataClientAsync(project=project)
        handle = client.get_table(instance, table)
        return cls(client, handle, retention_ms=retention_ms, timeout_s=timeout_s,
                   clock_ms=clock_ms)

    def _fresh_cells(self) -> RowFilter:
        """Only the newest version, only cells not past retention (GC is eventual)."""
        oldest_ms = self._clock_ms() - self.retention_ms + 1
        start = datetime.datetime.fromtimestamp(max(oldest_ms, 0) / 1000, tz=datetime.UTC)
        return RowFilterChain([CellsColumnLimitFilter(1), TimestampRangeFilter(start=start)])

    async def put_many(self, clicks: Sequence[StoredClick]) -> int:
        keep = retained(clicks, self._clock_ms(), self.retention_ms)
        for start in range(0, len(keep), WRITE_CHUNK):
            entries: list[RowMutationEntry] = []
            for click in keep[start:start + WRITE_CHUNK]:
                cell = SetCell(FAMILY, QUALIFIER, click.to_bytes(),
                               timestamp_micros=click.ts_ms * 1000)
                entries.append(RowMutationEntry(index_row_key(click), cell))
                entries.append(RowMutationEntry(id_row_key(click.click_id), cell))
            try:
                await self._table.bulk_mutate_rows(entries, operation_timeout=self.timeout_s)
            except (MutationsExceptionGroup, api_exceptions.GoogleAPIError) as err:
                raise ClickStoreError(f"bigtable write: {_summary(err)}") from None
        return len(keep)

    async def latest(self, buyer_key: str, shop_id: str, at_ms: int,
                     window_ms: int) -> StoredClick | None:
        if shop_id is None:
            raise ValueError(f"shop_id must match {ID_PATTERN.pattern}, not None")
        return await self._latest(buyer_key, shop_id, at_ms, window_ms)

    async def latest_sitewide(self, buyer_key: str, at_ms: int,
                              window_ms: int) -> StoredClick | None:
        return await self._latest(buyer_key, None, at_ms, window_ms)

    async def _latest(self, buyer_key: str, shop_id: str | None, at_ms: int,
                      window_ms: int) -> StoredClick | None:
        check_lookup(buyer_key, shop_id)
        query = ReadRowsQuery(row_ranges=latest_range(buyer_key, shop_id, at_ms, window_ms),
                              limit=1, row_filter=self._fresh_cells())
        try:
            rows = await self._table.read_rows(query, operation_timeout=self.timeout_s)
        except api_exceptions.GoogleAPIError as err:
            raise ClickStoreError(f"bigtable read: {err}") from None
        return StoredClick.from_bytes(rows[0].cells[0].value) if rows else None

    async def get(self, click_id: str) -> StoredClick | None:
        if type(click_id) is not str or not CLICK_ID_PATTERN.fullmatch(click_id):
            return None  # the store holds canonical click ids only
        try:
            row = await self._table.read_row(id_row_key(click_id), row_filter=self._fresh_cells(),
                                             operation_timeout=self.timeout_s)
        except api_exceptions.GoogleAPIError as err:
            raise ClickStoreError(f"bigtable read: {err}") from None
        return StoredClick.from_bytes(row.cells[0].value) if row is not None else None

    async def close(self) -> None:
        await self._table.close()
        await self._client.close()


def _summary(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:300] + "..."
