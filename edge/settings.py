"""The edge's configuration: one typed object read from ``CPS_*`` environment variables.

Every setting is documented in the README's settings table; keep the two in step.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.settings import (
    AllowedHosts,
    CookieKeys,
    KafkaBootstrap,
    LinkKeys,
    LogLevel,
    RedisUrl,
)
from contracts.targets import TargetError, parse_target
from edge.delivery.ring import MIN_CAPACITY

_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COOKIE_DOMAIN = re.compile(r"\.?[a-z0-9-]+(\.[a-z0-9-]+)*")

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CPS_", extra="ignore", frozen=True,
                                      arbitrary_types_allowed=True)

    # Links and cookies.
    link_keys: LinkKeys
    cookie_keys: CookieKeys
    allowed_target_hosts: AllowedHosts
    allow_http_targets: bool = False
    redirect_path: str = "/c"
    safe_landing_url: str | None = None
    cookie_name: str = "cps_attr"
    cookie_domain: str | None = None
    cookie_secure: bool = True
    attribution_window_s: PositiveInt = 15 * 86400
    verdict_header: bool = False

    # Abuse controls.
    duplicate_window_s: NonNegativeInt = 30
    duplicate_max_entries: PositiveInt = 524_288
    rate_limit_per_s: NonNegativeInt = 100
    rate_limit_burst: PositiveInt = 500
    forwarded_hops: NonNegativeInt = 0
    bot_user_agents: str = ""

    # Click delivery.
    kafka_bootstrap: KafkaBootstrap = "127.0.0.1:9092"
    kafka_timeout_ms: PositiveInt = 1000
    kafka_client_id: str = "cps-edge"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    redis_timeout_ms: PositiveInt = 500
    spool_dir: Path = Path("var/spool")
    spool_fsync: bool = True
    buffer_max_events: PositiveInt = 50_000
    batch_max_events: PositiveInt = 2000
    delivery_linger_ms: NonNegativeInt = 5
    probe_interval_ms: PositiveInt = 1000
    shutdown_timeout_s: PositiveInt = 20
    handoff_ring_bytes: NonNegativeInt = 64 * 1024 * 1024

    # Observability.
    metrics_dir: Path | None = None
    log_level: LogLevel = "info"

    @field_validator("redirect_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not re.fullmatch(r"/[A-Za-z0-9/_-]*", value):
            raise ValueError("must be an absolute path like /c")
        return value

    @field_validator("cookie_name")
    @classmethod
    def _cookie_name(cls, value: str) -> str:
        if not _COOKIE_NAME.fullmatch(value):
            raise ValueError(f"must match {_COOKIE_NAME.pattern}")
        return value

    @field_validator("cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not _COOKIE_DOMAIN.fullmatch(value):
            raise ValueError("must be a lowercase domain like .shop.example")
        return value

    @field_validator("safe_landing_url")
    @classmethod
    def _landing(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        try:
            parse_target(value)
        except TargetError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("handoff_ring_bytes")
    @classmethod
    def _ring(cls, value: int) -> int:
        if value and value < MIN_CAPACITY:
            raise ValueError(f"must be 0 (off) or at least {MIN_CAPACITY} bytes")
        return value

    @model_validator(mode="after")
    def _http_policy(self) -> EdgeSettings:
        self.allowed_target_hosts.allow_http = self.allow_http_targets
        return self
