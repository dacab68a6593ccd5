"""Typed settings from the environment: the pieces every service's settings share.

Each service defines one ``BaseSettings`` subclass (prefix ``CPS_``) and loads
it with ``load_settings``, which turns validation failures into a short
message naming each bad variable, with no secret values and no traceback.
Any secret setting ``CPS_X`` may instead be given as a file path in
``CPS_X_FILE`` (for mounted secrets).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsError

from contracts.cookie import AES_KEY_SIZES
from contracts.keys import KeyConfigError, KeyRing
from contracts.targets import AllowList

ENV_PREFIX = "CPS_"
S = TypeVar("S", bound=BaseSettings)


class ConfigError(Exception):
    """Unusable configuration; ``str(err)`` is meant for the operator."""


def _ring(what: str, **kwargs: Any) -> BeforeValidator:
    def parse(value: object) -> KeyRing:
        if isinstance(value, KeyRing):
            return value
        if not isinstance(value, str):
            raise ValueError("expected KID:BASE64[,KID:BASE64...]")
        try:
            return KeyRing.parse(value, what=what, **kwargs)
        except KeyConfigError as err:
            raise ValueError(str(err).removeprefix(f"{what}: ")) from None
    return BeforeValidator(parse)


def _allow_list(value: object) -> AllowList:
    if isinstance(value, AllowList):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a comma-separated list of hosts")
    return AllowList.parse(value)


# NoDecode: pydantic-settings would otherwise try to parse these env values as JSON.
LinkKeys = Annotated[KeyRing, NoDecode, _ring("CPS_LINK_KEYS", min_size=32)]
CookieKeys = Annotated[KeyRing, NoDecode, _ring("CPS_COOKIE_KEYS", sizes=AES_KEY_SIZES)]
AllowedHosts = Annotated[AllowList, NoDecode, BeforeValidator(_allow_list)]


_BOOTSTRAP = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _bootstrap(value: str) -> str:
    hosts = [h.strip() for h in value.split(",") if h.strip()]
    if not hosts or not all(_BOOTSTRAP.fullmatch(h) for h in hosts):
        raise ValueError("expected HOST:PORT[,HOST:PORT...], e.g. kafka-1:9092")
    return ",".join(hosts)


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://HOST:PORT/DB, rediss://... or unix://PATH")
    return value


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError("one of " + ", ".join(LOG_LEVELS))
    return value.lower()


# Settings every service shares, validated one way everywhere.
KafkaBootstrap = Annotated[str, AfterValidator(_bootstrap)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]
LogLevel = Annotated[str, AfterValidator(_log_level)]


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus ``overrides``) or raise ``ConfigError``."""
    values = dict(overrides)
    for name in cls.model_fields:
        env = f"{ENV_PREFIX}{name.upper()}"
        path = os.environ.get(f"{env}_FILE")
        if name not in values and env not in os.environ and path:
            try:
                values[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ConfigError(f"{env}_FILE: cannot read {path}: {err.strerror}") from None
    try:
        return cls(**values)
    except ValidationError as err:
        lines = []
        for e in err.errors(include_url=False, include_input=False):
            field = ".".join(str(p) for p in e["loc"]) or "settings"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "missing":
                msg = "required but not set"
            lines.append(f"  {ENV_PREFIX}{field.upper()}: {msg}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
    except SettingsError as err:
        raise ConfigError(f"invalid configuration: {err}") from None
