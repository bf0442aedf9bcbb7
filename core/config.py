"""Configuration: environment variables prefixed ``PANDIAN_`` and an optional ``pandian.toml``.

Precedence, highest first: explicit arguments, environment, ``pandian.toml``, defaults.
Nested values use ``__`` in the environment, e.g. ``PANDIAN_PLANNING__DORMANT_DAYS=60``.
The file is looked up in the working directory, or wherever ``PANDIAN_CONFIG`` points.
"""

from __future__ import annotations

import os
from datetime import date, time
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.config_check import ConfigError, bad_values, unknown_env, unknown_keys
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
            k = k.upper()  # PANDIAN_PLANNING__POLICIES__A__... arrives in lower case
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
    workers: int = Field(
        default=4, ge=1, le=64, description="events processed at once per server process (the rest queue)"
    )
    replay_after_s: float = Field(
        default=120.0, gt=0, description="acknowledged events still unprocessed this long are replayed"
    )
    photos_dir: str = Field(default="pandian-photos", description="count photos, by content hash")
    photo_retention_days: int = Field(default=400, ge=1)
    public_url: str | None = Field(
        default=None,
        description="how phones reach this server (https://pandian.example.com): cards link count photos here",
    )
    photo_link_hours: int = Field(
        default=72, ge=1, le=24 * 30, description="how long a photo link on a card works"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="'json': one JSON object per line, with the trace id, for log shippers"
    )


class ScheduleSettings(BaseModel):
    """Scheduled jobs (``bot.scheduler``). Times are wall-clock times in ``timezone``; the three daily jobs run on
    working days only (the calendar with its holidays, make-up days and overrides decides)."""

    enabled: bool = Field(default=True, description="run the scheduled jobs in this server process")
    morning_push: time = Field(default=time(7, 30), description="plan the day, push each counter's task card")
    morning_push_enabled: bool = True
    afternoon_reminder: time = Field(default=time(15, 0), description="remind counters of unfinished tasks")
    afternoon_reminder_enabled: bool = True
    end_of_day_summary: time = Field(default=time(18, 0), description="summary for supervisors, managers")
    end_of_day_summary_enabled: bool = True
    escalation_every_minutes: int = Field(
        default=15, ge=1, le=1440, description="escalate overdue approval steps (and the other housekeeping)"
    )
    escalation_enabled: bool = True
    erp_sync_every_minutes: int = Field(
        default=60, ge=1, le=1440, description="ERP sync and posting drain (when integrations.erp exists)"
    )
    erp_sync_enabled: bool = True
    misfire_grace_minutes: int = Field(
        default=120, ge=1, le=720, description="a daily job missed (server down) still runs this much later"
    )

    @field_validator("morning_push", "afternoon_reminder", "end_of_day_summary")
    @classmethod
    def _wall_clock(cls, v: time) -> time:
        if v.tzinfo is not None:
            raise ValueError("give a local time such as 07:30; the time zone is the top-level 'timezone'")
        return v.replace(second=0, microsecond=0)


# ----------------------------------------------------------------------------------------------- ERP


class SpreadsheetErpSettings(BaseModel):
    """The built-in default: files in, files out (the import of ``pandian import`` and the export of
    ``pandian adjustments export``)."""

    inbox: str | None = Field(
        default=None,
        description="directory whose new .xlsx/.csv files `erp sync` imports (kind from the headers)",
    )
    outbox: str | None = Field(
        default=None, description="directory where `erp post` writes the adjustment export"
    )
    format: Literal["xlsx", "csv"] = "xlsx"


class ErpMovementSource(BaseModel):
    """One ERP document type read as stock movements: where it lives, which way it moves stock."""

    source: str = Field(description="Kingdee FormId, YonBIP list path or U8 resource name")
    type: Literal["receipt", "issue", "transfer", "production_issue", "adjustment"]
    sign: Literal[1, -1] = Field(description="+1: the quantity enters the warehouse; -1: it leaves")
    qty_field: str = "FRealQty"
    warehouse_field: str = "FStockId"
    location_field: str | None = "FStockLocId"
    line_field: str = Field(default="FEntity_FEntryID", description="the line's id (Kingdee: the entry key)")
    org_field: str | None = Field(
        default="FStockOrgId",
        description="Kingdee: the document's stock organisation, filtered on erp.kingdee.org",
    )


def _kingdee_movements() -> list[ErpMovementSource]:
    return [
        ErpMovementSource(source="STK_InStock", type="receipt", sign=1, line_field="FInStockEntry_FEntryID"),
        ErpMovementSource(source="SAL_OUTSTOCK", type="issue", sign=-1),
        ErpMovementSource(source="STK_MISCELLANEOUS", type="receipt", sign=1, qty_field="FQty"),
        ErpMovementSource(source="STK_MisDelivery", type="issue", sign=-1, qty_field="FQty"),
        ErpMovementSource(source="PRD_PickMtrl", type="production_issue", sign=-1, qty_field="FActualQty"),
    ]


class KingdeeSettings(BaseModel):
    """Kingdee K/3 Cloud (金蝶云星空) WebAPI: session login, ExecuteBillQuery, Save → Submit → Audit."""

    server_url: str = Field(description="the customer's site, e.g. http://erp.example.com/k3cloud/")
    acct_id: str = Field(description="data centre id (账套)")
    username: str
    app_id: str
    app_secret: SecretStr
    lcid: int = 2052
    login: Literal["app_secret", "sign"] = Field(
        default="app_secret", description="AuthService.LoginByAppSecret, or LoginBySign (sha256 signature)"
    )
    org: str = Field(description="stock organisation number (FStockOrgId.FNumber); also owner and keeper")
    location_flex: str = Field(default="FF100001", description="the flex field of the location dimension")
    gain_bill_type: str = "PY01_SYS"
    loss_bill_type: str = "PK01_SYS"
    transfer_bill_type: str = "ZJDB01_SYS"
    stock_status: str = "KCZT01_SYS"
    cost_field: str = Field(default="FRefCost", description="BD_MATERIAL field read as the unit cost")
    barcode_field: str = Field(default="FBARCODE", description="BD_MATERIAL field read as the barcode")
    key_field: str | None = Field(
        default=None,
        description="bill header field that carries our bill number, which Kingdee keeps even when its numbering "
        "rule replaces FBillNo (None: the header note, FNoteHead / FNote on transfers; or a custom field)",
    )
    movement_sources: list[ErpMovementSource] = Field(default_factory=_kingdee_movements)


def _yonbip_movements() -> list[ErpMovementSource]:
    return [
        ErpMovementSource(source="/yonbip/scm/purinrecord/list", type="receipt", sign=1, qty_field="qty",
                          warehouse_field="warehouse_code", location_field="goodsposition_code"),
        ErpMovementSource(source="/yonbip/scm/salesout/list", type="issue", sign=-1, qty_field="qty",
                          warehouse_field="warehouse_code", location_field="goodsposition_code"),
        ErpMovementSource(source="/yonbip/scm/othinrecord/list", type="receipt", sign=1, qty_field="qty",
                          warehouse_field="warehouse_code", location_field="goodsposition_code"),
        ErpMovementSource(source="/yonbip/scm/othoutrecord/list", type="issue", sign=-1, qty_field="qty",
                          warehouse_field="warehouse_code", location_field="goodsposition_code"),
    ]  # fmt: skip


class YonBipSettings(BaseModel):
    """Yonyou YonBIP / YonSuite open API: signed self-built-app token, JSON business calls."""

    gateway_url: str | None = Field(default=None, description="business gateway (…/iuap-api-gateway)")
    token_url: str | None = Field(default=None, description="token service (…/iuap-api-auth)")
    openapi_url: str = Field(default="https://api.diwork.com", description="for data-centre discovery")
    tenant_id: str | None = Field(default=None, description="discover gateway_url/token_url from this tenant")
    app_key: str
    app_secret: SecretStr
    org: str = Field(description="stock organisation code")
    token_error_codes: list[str] = Field(
        default_factory=lambda: ["310036", "1090003500065"], description="answer codes meaning 'log in again'"
    )
    key_field: str = Field(
        default="memo", description="header field of the difference document that carries our bill number"
    )
    movement_sources: list[ErpMovementSource] = Field(default_factory=_yonbip_movements)

    @model_validator(mode="after")
    def _urls(self) -> YonBipSettings:
        if not self.tenant_id and not (self.gateway_url and self.token_url):
            raise ValueError("yonbip needs gateway_url and token_url, or tenant_id to discover them")
        return self


def _u8_movements() -> list[ErpMovementSource]:
    return [
        ErpMovementSource(source="purchasein", type="receipt", sign=1, qty_field="quantity",
                          warehouse_field="warehousecode", location_field="position"),
        ErpMovementSource(source="saleout", type="issue", sign=-1, qty_field="quantity",
                          warehouse_field="warehousecode", location_field="position"),
        ErpMovementSource(source="materialout", type="production_issue", sign=-1, qty_field="quantity",
                          warehouse_field="warehousecode", location_field="position"),
        ErpMovementSource(source="productin", type="receipt", sign=1, qty_field="quantity",
                          warehouse_field="warehousecode", location_field="position"),
    ]  # fmt: skip


class U8Settings(BaseModel):
    """Yonyou U8+ OpenAPI (api.yonyouup.com): token, one-time trade id per write, other-in / other-out."""

    base_url: str = "https://api.yonyouup.com"
    from_account: str
    to_account: str
    app_key: str
    app_secret: SecretStr
    ds_sequence: int | None = Field(default=None, description="data source (账套) sequence, when several")
    gain_rd_code: str = Field(description="收发类别 code of 盘盈入库 (count gains)")
    loss_rd_code: str = Field(description="收发类别 code of 盘亏出库 (count losses)")
    token_error_codes: list[str] = Field(default_factory=lambda: ["30002", "30003"])
    key_field: str = Field(default="memory", description="voucher header field that carries our bill number")
    movement_lookback_days: int = Field(
        default=7, ge=0, le=90, description="re-read vouchers dated this many days before the last one seen"
    )
    movement_sources: list[ErpMovementSource] = Field(default_factory=_u8_movements)


class SapSettings(BaseModel):
    """SAP S/4HANA OData v2: API_PHYSICAL_INVENTORY_DOC_SRV (and product, stock, material document APIs)."""

    base_url: str = Field(description="https://host:port, without /sap/opu/odata")
    username: str = Field(description="communication user (SAP_COM_0107 and friends)")
    password: SecretStr
    sap_client: str | None = None
    plants: dict[str, str] = Field(
        default_factory=dict,
        description="plant code -> name; a plant is a warehouse, a storage location a location",
    )
    language: str = "ZH"
    reason_code: str | None = Field(default=None, description="ReasonForPhysInvtryDifference")
    skip_movement_types: list[str] = Field(
        default_factory=lambda: ["701", "702", "711", "712"],
        description="count postings: they reach the book through stock snapshots",
    )


ErpName = Literal["spreadsheet", "kingdee", "yonbip", "u8", "sap"]


class ErpSettings(BaseModel):
    """Where book stock comes from and where approved adjustments go (integrations.erp)."""

    connector: ErpName = "spreadsheet"
    bill_prefix: str = Field(
        default="PD", pattern=r"^[A-Z0-9]{1,8}$", description="our bill numbers are this + 8 digits"
    )
    warehouses: list[str] = Field(
        default_factory=list, description="sync only these warehouse codes (all: [])"
    )
    default_location: str = Field(
        default="-", max_length=50, description="location code for stock kept per warehouse only"
    )
    page_size: int = Field(default=500, ge=1, le=2000)
    stock_refresh_minutes: int = Field(
        default=60,
        ge=0,
        description="read the full book-stock snapshot when the last one is older (0: every sync)",
    )
    timeout_s: float = Field(default=30.0, gt=0)
    read_retries: int = Field(default=2, ge=0, le=10, description="immediate retries of a failed read")
    step_retries: int = Field(default=3, ge=0, le=10, description="retries of a posting inside one attempt")
    retry_backoff_s: float = Field(default=1.0, ge=0, description="first wait between immediate retries")
    backoff_base_s: float = Field(
        default=60.0, ge=0, description="first wait before a posting is tried again"
    )
    backoff_max_s: float = Field(default=3600.0, ge=0)
    max_attempts: int = Field(default=12, ge=1, description="attempts before a posting fails for good")
    settle_s: float = Field(
        default=300.0,
        ge=0,
        description="a write whose answer was lost counts as not done only if the ERP still does not show it "
        "this long after it was sent (it may still be carrying out a request we gave up on)",
    )
    lease_s: int = Field(default=600, ge=30, description="a claimed posting is another drainer's after this")
    drain_batch: int = Field(default=50, ge=1, le=1000)
    spreadsheet: SpreadsheetErpSettings = Field(default_factory=SpreadsheetErpSettings)
    kingdee: KingdeeSettings | None = None
    yonbip: YonBipSettings | None = None
    u8: U8Settings | None = None
    sap: SapSettings | None = None

    @model_validator(mode="after")
    def _section(self) -> ErpSettings:
        if self.connector != "spreadsheet" and getattr(self, self.connector) is None:
            raise ValueError(
                f"erp.connector is {self.connector!r} but the [erp.{self.connector}] section is missing"
            )
        return self


class ImportSettings(BaseModel):
    """Limits on the spreadsheets that ``pandian import`` and the ERP spreadsheet inbox read. An .xlsx is a zip:
    its members' sizes and compression ratios are checked, and its shared strings and rows counted, before it
    is parsed, so a decompression bomb is refused in a moment with a message instead of filling the memory."""

    xlsx_max_uncompressed_mb: int = Field(
        default=1024,
        ge=1,
        description="an .xlsx whose members add up to more than this, unpacked, is refused",
    )
    xlsx_max_ratio: float = Field(
        default=200.0,
        ge=10,
        description="a member of 16 MiB or more (unpacked) that is this many times its packed size is refused "
        "(Excel files are 5-30x)",
    )
    xlsx_max_part_mb: int = Field(
        default=50,
        ge=1,
        description="largest XML part other than the worksheets and shared strings, unpacked",
    )
    xlsx_max_shared_strings: int = Field(
        default=2_000_000, ge=1000, description="distinct texts (Excel's shared strings) an .xlsx may hold"
    )
    xlsx_max_shared_strings_mb: int = Field(
        default=200, ge=1, description="size of the shared strings part, unpacked"
    )
    xlsx_max_row_kb: int = Field(
        default=1024, ge=16, description="largest row (or shared string) of an .xlsx, unpacked"
    )


def _default_db_url() -> str:
    return f"sqlite+aiosqlite:///{Path.cwd() / 'pandian.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PANDIAN_",
        env_nested_delimiter="__",
        extra="ignore",  # unknown keys are refused by name, with the nearest one (core.config_check)
        hide_input_in_errors=True,  # a validation error never echoes a value: it may be a secret
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
    erp: ErpSettings = Field(default_factory=ErpSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    importing: ImportSettings = Field(default_factory=ImportSettings)
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
        problems = unknown_env(os.environ, settings_cls, PLATFORM_SECTIONS)
        if problems:
            raise ConfigError(problems)
        return (
            init_settings,
            env_settings,
            _CheckedToml(settings_cls, toml_file=config_path()),
        )


# The chat platforms' own models (integrations.<platform>.settings), registered by the bot's composition root
# (bot.cli_config) so that core checks their sections without importing a platform.
PLATFORM_SECTIONS: dict[str, type[BaseModel]] = {}


def register_platform(name: str, model: type[BaseModel]) -> None:
    PLATFORM_SECTIONS[name] = model


def config_path() -> Path:
    """The configuration file: ``PANDIAN_CONFIG``, else ``pandian.toml`` in the working directory."""
    return Path(os.environ.get("PANDIAN_CONFIG", "pandian.toml")).expanduser().absolute()


class _CheckedToml(TomlConfigSettingsSource):
    """pandian.toml, refused with the key's name (and the nearest real one) when a key is unknown."""

    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path) -> None:
        if "PANDIAN_CONFIG" in os.environ and not toml_file.is_file():
            raise ConfigError([f"PANDIAN_CONFIG 指向的文件不存在：{toml_file} / PANDIAN_CONFIG names a file that "
                               f"does not exist: {toml_file}"])  # fmt: skip
        super().__init__(settings_cls, toml_file=toml_file)
        problems = unknown_keys(self.toml_data, settings_cls, str(toml_file), PLATFORM_SECTIONS)
        if problems:
            raise ConfigError(problems)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        import tomllib

        try:
            return super()._read_file(file_path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                [f"{file_path}：TOML 格式错误（{exc}） / {file_path}: not valid TOML ({exc})"]
            ) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{file_path}：请保存为 UTF-8 / {file_path}: save it as UTF-8"]) from None


def load_settings(**overrides: Any) -> Settings:
    """The settings in effect, every platform section checked with its platform's model. Every mistake is
    a :class:`ConfigError`: one bilingual line per problem, never a value."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(bad_values(exc)) from None
    problems: list[str] = []
    for name, model in PLATFORM_SECTIONS.items():
        section = getattr(settings, name, None)
        if section is not None:
            try:
                model.model_validate(section)
            except ValidationError as exc:
                problems += bad_values(exc, (name,))
    if problems:
        raise ConfigError(problems)
    return settings
