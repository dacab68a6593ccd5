"""The attribution service's configuration: one typed object from ``CPS_*`` variables.

``cps-attribution run`` (click persister, order sync, attributor, outbox
publisher) and ``cps-attribution explain`` read it; every setting is in the
README's attribution settings table.  A bad value stops the process at start
with a message naming the variable (``contracts.settings.load_settings``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.settings import CookieKeys, KafkaBootstrap, LogLevel, RedisUrl

DAY_S = 86_400


def _schedule(value: object) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, str):
        raise ValueError("expected comma-separated seconds, e.g. 10,60,300,1800")
    try:
        steps = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected comma-separated whole seconds, e.g. 10,60,300,1800") from None
    if any(step <= 0 for step in steps):
        raise ValueError("every retry delay must be positive")
    return steps


RetrySchedule = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_schedule)]
PositiveInt = Annotated[int, Field(gt=0)]


class AttributionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore", frozen=True,
                                      arbitrary_types_allowed=True)

    # Where things are.
    database_url: str = "sqlite:///var/ledger.db"
    kafka_bootstrap: KafkaBootstrap = "127.0.0.1:9092"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"  # the edge's fallback stream
    click_store: Literal["redis", "bigtable"] = "redis"
    click_store_redis_url: RedisUrl | None = None  # default: CPS_REDIS_URL
    bigtable_project: str = "cps"
    bigtable_instance: str = "cps"
    bigtable_table: str = "clicks"

    # Attribution rules (SPEC section 7).
    cookie_keys: CookieKeys  # to read the sealed attribution_token orders carry
    attribution_window_s: PositiveInt = 15 * DAY_S
    cps_exit_grace_s: PositiveInt = 15 * DAY_S
    cross_shop_attribution: bool = True
    # The seeds' "self-purchase saving": a promoter buying through its own link is credited.
    self_purchase_allowed: bool = True
    # Delayed attribution: an order without CPS evidence is looked at again after
    # each of these delays; after the last one it is decided self_operated or none.
    attribution_retry_schedule_s: RetrySchedule = (10, 60, 300, 1800)

    # Consumption.
    persister_group: str = "cps-click-persister"
    order_sync_group: str = "cps-order-sync"
    consumer_batch_max: PositiveInt = 2000
    attributor_batch_max: PositiveInt = 500
    outbox_batch_max: PositiveInt = 1000
    poll_interval_ms: PositiveInt = 200

    # Serving: the read-only click query API and /metrics.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8100, ge=0, le=65535)
    log_level: LogLevel = "info"

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("expected sqlite:///PATH or postgresql+psycopg://USER@HOST/DB")
        return value

    @property
    def window_ms(self) -> int:
        return self.attribution_window_s * 1000

    @property
    def store_redis_url(self) -> str:
        return self.click_store_redis_url or self.redis_url
