"""All configuration, from the environment (or a .env file). Secrets never appear in repr or logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from workflows.models import DEFAULT_CLAUDE_MODEL


class OverlaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True)

    ib_mcp_url: str = Field(
        default="http://localhost:5002/mcp/",
        validation_alias=AliasChoices("IB_MCP_URL"),
        description="IB_MCP's streamable HTTP endpoint (trailing slash)",
    )
    ib_mcp_command: str | None = Field(
        default=None,
        validation_alias=AliasChoices("IB_MCP_COMMAND"),
        description="run IB_MCP (or the simulator) as a stdio subprocess instead of connecting to a URL",
    )
    ib_account_ids: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("IB_ACCOUNT_IDS", "IB_ACCOUNT_ID")
    )
    ib_reply_allow_list: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("IB_REPLY_ALLOW_LIST")
    )

    ib_pacing: Literal["local", "redis", "off"] = Field(
        default="local",
        validation_alias=AliasChoices("IB_PACING"),
        description="keep to IB's Web API pacing limits in this process, across workers via REDIS_URL, or not",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL"))
    event_bus: Literal["memory", "redis"] = Field(
        default="memory",
        validation_alias=AliasChoices("EVENT_BUS"),
        description="memory: one process; redis: any number of workers share trigger events (consumer group)",
    )
    event_stream_prefix: str = Field(default="overlay:events", validation_alias=AliasChoices("EVENT_STREAM_PREFIX"))
    event_claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        validation_alias=AliasChoices("EVENT_CLAIM_IDLE_MS"),
        description="an event a worker took but did not finish within this long is handed to another worker",
    )
    worker_name: str | None = Field(default=None, validation_alias=AliasChoices("WORKER_NAME"))
    embedded_poller: bool | None = Field(
        default=None,
        validation_alias=AliasChoices("EMBEDDED_POLLER"),
        description="poll inside this process; default: yes with EVENT_BUS=memory, no with redis (run "
        "`ib-overlay poller` once instead, so N workers do not fire every trigger N times)",
    )

    data_dir: Path = Field(default=Path("data"), validation_alias=AliasChoices("OVERLAY_DATA_DIR", "DATA_DIR"))
    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    poller_config: Path | None = Field(default=None, validation_alias=AliasChoices("POLLER_CONFIG"))
    checkpoint_retention_days: float = Field(
        default=7.0,
        ge=0,
        validation_alias=AliasChoices("CHECKPOINT_RETENTION_DAYS"),
        description="LangGraph checkpoints of runs finished longer ago than this are deleted (hourly sweep); "
        "runs, approvals, orders and the audit log are kept. 0 keeps checkpoints forever",
    )

    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CLAUDE_API_KEY")
    )
    claude_model: str = Field(default=DEFAULT_CLAUDE_MODEL, validation_alias=AliasChoices("CLAUDE_MODEL"))
    claude_daily_budget_usd: float = Field(default=5.0, ge=0, validation_alias=AliasChoices("CLAUDE_DAILY_BUDGET_USD"))

    trading_mode: Literal["paper", "live"] = Field(default="paper", validation_alias=AliasChoices("TRADING_MODE"))
    live_trading_enabled: bool = Field(default=False, validation_alias=AliasChoices("LIVE_TRADING_ENABLED"))
    approval_ttl_s: float = Field(default=300.0, gt=0, validation_alias=AliasChoices("APPROVAL_TTL_S"))
    max_order_notional_usd: float = Field(default=5000.0, gt=0, validation_alias=AliasChoices("MAX_ORDER_NOTIONAL_USD"))
    auto_approve_under_usd: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("AUTO_APPROVE_UNDER_USD"),
        description="per workflow, e.g. 'price_alert=500,vwap_order=1000': proposals at or under that notional "
        "are approved without asking, in paper mode only (risk checks still apply)",
    )
    resume_wait_s: float = Field(
        default=20.0,
        ge=0,
        validation_alias=AliasChoices("RESUME_WAIT_S"),
        description="approve_trade waits this long for the run; longer runs go on in the background",
    )
    max_price_drift_pct: float = Field(default=1.0, gt=0, validation_alias=AliasChoices("MAX_PRICE_DRIFT_PCT"))
    brackets: Literal["auto", "on", "off"] = Field(
        default="auto",
        validation_alias=AliasChoices("IB_BRACKETS"),
        description="exits of momentum_trade held at the broker as a bracket (stop + target attached to the entry): "
        "auto = when IB_MCP's order tool takes orders with parentId, on = required (a proposal fails without it), "
        "off = the overlay watches the price and places the exit itself",
    )

    market_calendar: str = Field(
        default="XNYS",
        validation_alias=AliasChoices("MARKET_CALENDAR"),
        description="exchange_calendars code for market hours, or 'always' (simulator, replays)",
    )

    scan_cron: str | None = Field(
        default="0 9 * * *",
        validation_alias=AliasChoices("SCAN_CRON"),
        description="when market_scan runs (crontab, America/New_York, exchange trading days only); empty = never",
    )

    http_host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("OVERLAY_HOST"))
    http_port: int = Field(default=8765, ge=0, le=65535, validation_alias=AliasChoices("OVERLAY_PORT"))
    http_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OVERLAY_TOKEN"))

    @field_validator("auto_approve_under_usd", mode="before")
    @classmethod
    def _workflow_amounts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        amounts: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            workflow, separator, amount = part.partition("=")
            if not separator:
                raise ValueError(f"AUTO_APPROVE_UNDER_USD: {part!r} should look like 'price_alert=500'")
            amounts[workflow.strip()] = amount.strip()
        return amounts

    @field_validator("scan_cron", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("ib_account_ids", "ib_reply_allow_list", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def workflows_db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'langgraph' / 'workflows.db'}"

    @property
    def context_db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'langgraph' / 'context.db'}"

    @property
    def checkpoint_url(self) -> str:
        return self.database_url or str(self.data_dir / "langgraph" / "checkpoints" / "checkpoints.db")

    @property
    def triggers_db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'poller' / 'triggers.db'}"

    @property
    def runs_embedded_poller(self) -> bool:
        return self.event_bus == "memory" if self.embedded_poller is None else self.embedded_poller

    @property
    def price_cache_path(self) -> Path:
        return self.data_dir / "poller" / "price_cache.db"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "http_token"
