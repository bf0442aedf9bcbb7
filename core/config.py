"""Configuration: environment variables prefixed ``PANDIAN_`` and an optional ``pandian.toml``.

Precedence, highest first: explicit arguments, environment, ``pandian.toml``, defaults.
Nested values use ``__`` in the environment, e.g. ``PANDIAN_PLANNING__DORMANT_DAYS=60``.
The file is looked up in the working directory, or wherever ``PANDIAN_CONFIG`` points.
"""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.variance.rules import ApprovalSettings, ReasonSettings
from core.variance.tolerance import ToleranceSettings

CLASSES = ("A", "B", "C")


class ClassPolicy(BaseModel):
    """How often one ABC class is counted, and how long one count takes."""

    counts_per_year: int = Field(ge=1, le=365)
    minutes_per_task: float = Field(default=3.0, gt=0, le=600)


def _default_policies() -> dict[str, ClassPolicy]:
    # Weekly A, monthly B, quarterly C (the counting practice the product is built around).
    return {
        "A": ClassPolicy(counts_per_year=52, minutes_per_task=4.0),
        "B": ClassPolicy(counts_per_year=12, minutes_per_task=3.0),
        "C": ClassPolicy(counts_per_year=4, minutes_per_task=2.0),
    }


class ClassificationSettings(BaseModel):
    a_cutoff: float = Field(default=0.80, gt=0, lt=1, description="cumulative value share that ends class A")
    b_cutoff: float = Field(default=0.95, gt=0, lt=1, description="cumulative value share that ends class B")
    lookback_days: int = Field(default=365, ge=1)
    scope: str = Field(default="company", description="'company' or 'warehouse'")
    # Per-warehouse cutoffs, keyed by warehouse code: {"SH01": {"a_cutoff": 0.7, "b_cutoff": 0.9}}
    warehouse_cutoffs: dict[str, dict[str, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered(self) -> ClassificationSettings:
        if not self.a_cutoff < self.b_cutoff:
            raise ValueError("a_cutoff must be below b_cutoff")
        if self.scope not in ("company", "warehouse"):
            raise ValueError("scope must be 'company' or 'warehouse'")
        for code, cut in self.warehouse_cutoffs.items():
            a, b = cut.get("a_cutoff", self.a_cutoff), cut.get("b_cutoff", self.b_cutoff)
            if not 0 < a < b < 1:
                raise ValueError(f"warehouse {code}: need 0 < a_cutoff < b_cutoff < 1")
        return self

    def cutoffs_for(self, warehouse_code: str | None) -> tuple[float, float]:
        cut = self.warehouse_cutoffs.get(warehouse_code or "", {})
        return cut.get("a_cutoff", self.a_cutoff), cut.get("b_cutoff", self.b_cutoff)


class PlanningSettings(BaseModel):
    policies: dict[str, ClassPolicy] = Field(default_factory=_default_policies)
    dormant_days: int = Field(default=90, ge=1, description="no movement for this many days triggers a count")
    turnover_threshold: Decimal = Field(
        default=Decimal("50000"), ge=0, description="value moved since the last count that triggers a count"
    )
    zero_confirm: bool = True
    inaccurate_days: int = Field(
        default=30, ge=1, description="a miss within this many days triggers a count"
    )
    overdue_after_days: int = Field(default=2, ge=0, description="late working days before a task is overdue")
    discretionary_daily_cap: int = Field(
        default=100, ge=0, description="most dormant/turnover counts a day per warehouse; the rest wait"
    )
    trigger_minutes_factor: float = Field(
        default=1.5, gt=0, description="event counts take longer than rotation"
    )

    @field_validator("policies")
    @classmethod
    def _all_classes(cls, v: dict[str, ClassPolicy]) -> dict[str, ClassPolicy]:
        merged = _default_policies()
        for k, p in v.items():
            if k not in CLASSES:
                raise ValueError(f"unknown ABC class {k!r}; use A, B or C")
            merged[k] = p
        return merged


class CalendarSettings(BaseModel):
    country: str = "CN"
    # Company overrides: extra working days (e.g. a Saturday stock day) and extra days off.
    extra_working_days: list[date] = Field(default_factory=list)
    extra_days_off: list[date] = Field(default_factory=list)


class CountingSettings(BaseModel):
    moved_window_minutes: int = Field(
        default=30, ge=0, description="a movement this close to a count marks it 'moved during count'"
    )
    max_recounts: int = Field(
        default=1, ge=0, le=5, description="blind recounts per task before a supervisor decides"
    )


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Signs card button payloads. Set it (at least 16 bytes) when several servers share the work; when unset,
    # one is generated once into ``payload_secret_file`` and reused, so cards stay valid across restarts.
    payload_secret: str | None = None
    payload_secret_file: str = Field(
        default=".pandian-secret", description="where the generated secret lives"
    )
    card_max_age_days: int = Field(default=7, ge=1, description="older card buttons are refused")
    card_sync_interval_s: float = Field(
        default=15.0, gt=0, description="how often cards are reconciled with decisions made elsewhere (CLI)"
    )
    outbox_interval_s: float = Field(default=1.0, gt=0)
    photos_dir: str = Field(default="pandian-photos", description="count photos, by content hash")
    photo_retention_days: int = Field(default=400, ge=1)
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per line, with the trace id, for log shippers"
    )


def _default_db_url() -> str:
    return f"sqlite+aiosqlite:///{Path.cwd() / 'pandian.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PANDIAN_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: str = Field(default_factory=_default_db_url)
    redis_url: str | None = None
    timezone: str = "Asia/Shanghai"
    locale: str = "zh-CN"
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)
    planning: PlanningSettings = Field(default_factory=PlanningSettings)
    calendar: CalendarSettings = Field(default_factory=CalendarSettings)
    counting: CountingSettings = Field(default_factory=CountingSettings)
    tolerance: ToleranceSettings = Field(default_factory=ToleranceSettings)
    reasons: ReasonSettings = Field(default_factory=ReasonSettings)
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    # Chat platforms: a section switches a platform on; bot.app validates it with the platform's own model
    # (integrations.<platform>.settings), so core never imports a platform.
    wecom: dict[str, Any] | None = None
    feishu: dict[str, Any] | None = None
    dingtalk: dict[str, Any] | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Asia/Shanghai") from exc
        return v

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("PANDIAN_CONFIG", "pandian.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
