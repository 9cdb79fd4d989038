"""`ib-overlay doctor`: checks the set-up and prints a table. Exit code 0 when nothing FAILs.

Checks: IB_MCP reachable and which of its tool groups (tags) it exposes, Orders above all; paper or live
accounts against TRADING_MODE; the data folder writable; the HTTP token file private; Redis and PostgreSQL
reachable when configured; Claude key present (informational). Secrets are never printed.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker import ib_mcp_tools as ib
from broker.client import BrokerClient, BrokerTarget
from broker.errors import BrokerError
from mcp_overlay_server.settings import OverlaySettings

Verdict = Literal["ok", "warn", "FAIL", "skip"]
CONNECT_TIMEOUT_S = 8.0
SERVICE_TIMEOUT_S = 5.0
TOOL_GROUPS: dict[str, tuple[str, ...]] = {
    "Market Data": ib.MARKET_DATA_TOOLS,
    "Portfolio": ib.PORTFOLIO_TOOLS,
    "Orders": ib.ORDER_TOOLS,
}


class ServiceSettings(BaseSettings):
    """Optional services the doctor checks when they are configured."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str


async def _broker_checks(settings: OverlaySettings, target: BrokerTarget) -> list[Check]:
    checks: list[Check] = []
    async with BrokerClient(target, connect_timeout_s=CONNECT_TIMEOUT_S) as broker:
        try:
            tools = await broker.connect()
        except BrokerError as exc:
            return [Check("IB_MCP reachable", "FAIL", str(exc))]
        checks.append(Check("IB_MCP reachable", "ok", f"{broker.target_label}: {len(tools)} tools"))
        for group, names in TOOL_GROUPS.items():
            missing = [name for name in names if name not in tools]
            if not missing:
                checks.append(Check(f"tools: {group}", "ok", "present"))
            elif group == "Orders":
                checks.append(
                    Check(
                        "tools: Orders",
                        "FAIL",
                        "absent: IB_MCP's .env excludes the 'Orders' tag; remove it from EXCLUDED_TAGS and restart "
                        "IB_MCP (approved orders cannot be placed until then)",
                    )
                )
            else:
                checks.append(Check(f"tools: {group}", "FAIL", f"missing {', '.join(missing)}"))
        try:
            accounts = await broker.accounts()
        except BrokerError as exc:
            checks.append(Check("accounts", "FAIL", str(exc)))
            return checks
        paper = [a.account_id for a in accounts if a.is_paper]
        live = [a.account_id for a in accounts if not a.is_paper]
        kinds = f"{len(paper)} paper (DU...), {len(live)} live"
        if settings.trading_mode == "live" and not live:
            checks.append(Check("paper/live", "FAIL", f"TRADING_MODE=live but the broker lists {kinds}"))
        elif settings.trading_mode == "live":
            state = "enabled" if settings.live_trading_enabled else "NOT enabled (LIVE_TRADING_ENABLED=false)"
            checks.append(Check("paper/live", "warn", f"LIVE trading {state}; {kinds}"))
        elif not paper:
            checks.append(Check("paper/live", "FAIL", f"TRADING_MODE=paper but the broker lists {kinds}"))
        else:
            checks.append(Check("paper/live", "ok", f"paper; {kinds}"))
    return checks


def _data_dir_check(data_dir: Path) -> Check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("data dir writable", "FAIL", f"{data_dir.resolve()}: {exc.strerror or exc}")
    return Check("data dir writable", "ok", str(data_dir.resolve()))


def _token_check(settings: OverlaySettings) -> Check:
    if settings.http_token is not None:
        return Check("HTTP token", "ok", "from OVERLAY_TOKEN")
    token_file = settings.token_file
    if not token_file.exists():
        return Check("HTTP token", "ok", f"{token_file} will be created (mode 0600) on the first HTTP start")
    mode = token_file.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("HTTP token", "FAIL", f"{token_file} is mode {mode:o}; run: chmod 600 {token_file}")
    return Check("HTTP token", "ok", f"{token_file} (mode 600)")


async def _redis_check(url: str | None) -> Check:
    if not url:
        return Check("Redis", "skip", "REDIS_URL not set")
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        with anyio.fail_after(SERVICE_TIMEOUT_S):
            await client.ping()
    except Exception as exc:  # whatever went wrong is the finding itself
        return Check("Redis", "FAIL", f"{_without_password(url)}: {type(exc).__name__}: {exc}")
    finally:
        await client.aclose()
    return Check("Redis", "ok", _without_password(url))


async def _postgres_check(url: str | None) -> Check:
    if not url or not url.startswith(("postgresql", "postgres")):
        return Check("PostgreSQL", "skip", "DATABASE_URL not set to PostgreSQL (SQLite files in the data dir)")
    import psycopg

    plain = url.replace("+psycopg", "").replace("+asyncpg", "")
    try:
        with anyio.fail_after(SERVICE_TIMEOUT_S):
            connection = await psycopg.AsyncConnection.connect(plain, connect_timeout=int(SERVICE_TIMEOUT_S))
            await connection.close()
    except (OSError, TimeoutError, psycopg.Error) as exc:
        return Check("PostgreSQL", "FAIL", f"{_without_password(url)}: {exc}")
    return Check("PostgreSQL", "ok", _without_password(url))


def _without_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def _claude_check(settings: OverlaySettings) -> Check:
    if settings.anthropic_api_key is None:
        return Check("Claude", "warn", "no ANTHROPIC_API_KEY: the offline rules analyst answers")
    return Check("Claude", "ok", f"key set; model {settings.claude_model}; ${settings.claude_daily_budget_usd:g}/day")


async def run_checks(
    settings: OverlaySettings, target: BrokerTarget, services: ServiceSettings | None = None
) -> list[Check]:
    services = services or ServiceSettings()
    return [
        *await _broker_checks(settings, target),
        _data_dir_check(settings.data_dir),
        _token_check(settings),
        await _redis_check(services.redis_url),
        await _postgres_check(settings.database_url),
        _claude_check(settings),
    ]


def render_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name.ljust(width)}  {c.verdict.ljust(6)}  {c.detail}" for c in checks]
    failed = sum(c.verdict == "FAIL" for c in checks)
    lines.append("all checks passed" if not failed else f"{failed} check(s) FAILED")
    return "\n".join(lines)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0
