"""`ib-overlay`: serve the overlay, run the demo, check the set-up, verify the audit log, run the poller."""

from __future__ import annotations

import argparse
import logging
import math
import runpy
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from mcp_overlay_server.logging_setup import configure_logging
from mcp_overlay_server.settings import OverlaySettings
from mcp_overlay_server.startup import LazyOverlay, OverlayUnavailable, WaitForOverlay, open_in_background
from poller.config import ConfigError, PollerConfig, load_config

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

log = logging.getLogger("ib_overlay")


def _parser() -> argparse.ArgumentParser:
    logging_options = argparse.ArgumentParser(add_help=False)
    logging_options.add_argument("-v", "--verbose", action="store_true", help="debug logging (on stderr)")
    logging_options.add_argument(
        "--log-format", choices=("json", "text"), default="json", help="stderr log format (the log file is JSON)"
    )
    parser = argparse.ArgumentParser(prog="ib-overlay", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **options: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, parents=[logging_options], **options)

    serve = command("serve", help="run the overlay MCP server (stdio for Claude Desktop by default)")
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    serve.add_argument("--host", help="HTTP bind address (default OVERLAY_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default OVERLAY_PORT or 8765; 0 = any free port)")
    serve.add_argument("--config", type=Path, help="poller YAML (default POLLER_CONFIG)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="trade against an in-process simulated IB_MCP with the demo triggers",
    )
    serve.add_argument("--no-poller", action="store_true", help="do not poll prices (tools only)")

    demo = command("demo", help="simulated IB_MCP + overlay + poller over HTTP: a trigger fires, you approve, it fills")
    demo.add_argument("--port", type=int, default=8765, help="overlay HTTP port (0 = any free port)")
    demo.add_argument("--sim-port", type=int, default=5102, help="simulated IB_MCP HTTP port (0 = any free port)")
    demo.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve the first proposal through a real MCP client, print the fill, and exit",
    )
    demo.add_argument("--data-dir", type=Path, help="where the demo keeps its databases (default: a fresh temp dir)")

    doctor = command("doctor", help="check IB_MCP, its order tools, paper/live, data dir, Redis, Postgres")
    doctor.add_argument("--demo", action="store_true", help="check against the in-process simulated IB_MCP")

    audit = command("audit", help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_commands.add_parser("verify", help="check the audit log's hash chain; exit 1 if it was altered")
    export = audit_commands.add_parser("export", help="write the audit log as JSON lines")
    export.add_argument("file", type=Path, help="where to write (JSON lines)")

    replay = command("replay", help="backtest: replay recorded bars through the triggers, workflows and risk checks")
    replay.add_argument("--data", type=Path, required=True, help="CSV: date, open, high, low, close, volume[, symbol]")
    replay.add_argument("--symbol", help="the symbol of a CSV without a symbol column (default: the file name)")
    replay.add_argument("--config", type=Path, required=True, help="poller YAML with the triggers to replay")
    replay.add_argument("--workflows", help="comma-separated: only triggers that start these workflows")
    replay.add_argument("--speed", default="max", help="'max' (as fast as possible) or N bars per second")
    replay.add_argument(
        "--approve", default="all", help="approval policy: all, none, or under:USD (approve notional <= USD)"
    )
    replay.add_argument(
        "--commission", default="ib", help="'ib' (0.005/share, $1 min, 1%% cap), 'none', or PER_SHARE[,MIN[,MAX_PCT]]"
    )
    replay.add_argument("--slippage-bps", type=Decimal, default=Decimal(0), help="fills this far beyond the close")
    replay.add_argument("--cash", type=Decimal, default=Decimal(100_000), help="starting cash in USD")
    replay.add_argument("--out", type=Path, default=Path("replay_report"), help="where report.json/.html go")

    subparsers.add_parser("poller", help="run the poller as its own process (the same as `python -m poller`)")
    return parser


def _poller_config(path: Path | None) -> PollerConfig | None:
    return load_config(path) if path else None


@asynccontextmanager
async def _opened_overlay(
    args: argparse.Namespace, settings: OverlaySettings, config: PollerConfig | None
) -> AsyncIterator[Overlay]:
    from mcp_overlay_server.app import open_overlay

    target = None
    if args.demo:
        from mcp_overlay_server.demo import demo_market, demo_poller_config, demo_sim_server

        target = demo_sim_server(demo_market())
        config = config or demo_poller_config()
    async with open_overlay(settings, poller_config=config, target=target, run_poller=not args.no_poller) as overlay:
        yield overlay


async def _serve(args: argparse.Namespace, settings: OverlaySettings) -> int:
    """Serve MCP at once; the overlay opens in the background (tools wait for it). Over stdio a failed opening
    is reported by every tool call; over HTTP (a supervised service) it stops the server with exit code 1."""
    from mcp_overlay_server.app import preload_overlay_modules
    from mcp_overlay_server.server import build_server

    config = _poller_config(args.config or settings.poller_config)
    # The receiver is open before anything announces readiness, so an early SIGTERM still shuts down cleanly.
    # The exit stack closes outside the cancelled scope, so closing is not itself cancelled.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with AsyncExitStack() as stack:
            overlay = await stack.enter_async_context(
                open_in_background(
                    partial(_opened_overlay, args, settings, config),
                    preload=partial(preload_overlay_modules, ("mcp_overlay_server.demo",) if args.demo else ()),
                )
            )
            server = build_server(overlay)
            if not args.http:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_cancel_on_signal, signals, tasks.cancel_scope)
                    await server.run_stdio_async()
                    tasks.cancel_scope.cancel()
                return 0
            from mcp_overlay_server.http import build_http_app, load_or_create_token, serve_http

            host = args.host or settings.http_host
            port = settings.http_port if args.port is None else args.port
            token = (
                settings.http_token.get_secret_value()
                if settings.http_token
                else load_or_create_token(settings.token_file)
            )
            app = WaitForOverlay(build_http_app(overlay, server, token, host), overlay)
            url = await stack.enter_async_context(serve_http(app, host, port))
            print(f"overlay MCP server on {url} (bearer token in {settings.token_file})", file=sys.stderr, flush=True)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_cancel_on_signal, signals, tasks.cancel_scope)
                tasks.start_soon(_cancel_if_opening_fails, overlay, tasks.cancel_scope)
            return 0 if overlay.failure is None else 1


async def _cancel_if_opening_fails(overlay: LazyOverlay, scope: anyio.CancelScope) -> None:
    try:
        await overlay.wait_open(math.inf)
    except OverlayUnavailable as exc:
        log.error("stopping: %s", exc)
        scope.cancel()


async def _cancel_on_signal(signals: AsyncIterator[int], scope: anyio.CancelScope) -> None:
    """SIGTERM / SIGINT: stop taking work; the exit stack then lets in-flight steps finish (bounded) or leaves
    them checkpointed for the next start, and closes everything in reverse order."""
    async for signum in signals:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        scope.cancel()
        return


async def _demo(args: argparse.Namespace) -> int:
    from mcp_overlay_server.demo import run_demo

    return await run_demo(
        overlay_port=args.port, sim_port=args.sim_port, auto_approve=args.auto_approve, data_dir=args.data_dir
    )


async def _doctor(args: argparse.Namespace, settings: OverlaySettings) -> int:
    from mcp_overlay_server.app import broker_target
    from mcp_overlay_server.doctor import exit_code, render_table, run_checks

    if args.demo:
        from mcp_overlay_server.demo import demo_market, demo_sim_server

        target = demo_sim_server(demo_market())
    else:
        target = broker_target(settings)
    checks = await run_checks(settings, target)
    print(render_table(checks), flush=True)
    return exit_code(checks)


async def _audit(args: argparse.Namespace, settings: OverlaySettings) -> int:
    from workflows import audit as audit_module
    from workflows.store import make_engine

    engine = make_engine(settings.workflows_db_url)
    try:
        audit = audit_module.AuditLog(engine)
        await audit.init()
        if args.audit_command == "verify":
            outcome = await audit.verify()
            print(outcome, flush=True)
            return 0 if getattr(outcome, "ok", outcome) else 1
        written = await audit.export_jsonl(args.file)
        print(f"audit log written to {args.file} ({written} entries)", flush=True)
        return 0
    finally:
        await engine.dispose()


async def _replay(args: argparse.Namespace, settings: OverlaySettings) -> int:
    from broker.sim.prices import load_bars_csv
    from replay.engine import ReplayConfig, ReplayError, run_replay
    from replay.market import parse_commission
    from replay.policy import ApprovalPolicy
    from replay.report import write_report

    try:
        speed = None if args.speed == "max" else float(args.speed)
        if speed is not None and speed <= 0:
            raise ValueError("--speed must be 'max' or a positive number of bars per second")
        config = ReplayConfig(
            bars=load_bars_csv(args.data, args.symbol),
            triggers=load_config(args.config).triggers,
            workflows=frozenset(w.strip() for w in args.workflows.split(",") if w.strip()) if args.workflows else None,
            policy=ApprovalPolicy.parse(args.approve),
            commission=parse_commission(args.commission),
            slippage_bps=args.slippage_bps,
            cash_usd=args.cash,
            bars_per_second=speed,
        )
        report = await run_replay(config, settings)
    except (ReplayError, ValueError, OSError, KeyError) as exc:
        print(f"ib-overlay replay: {exc}", file=sys.stderr)
        return 2
    json_path, html_path = write_report(report, args.out)
    print(
        f"{len(report.trades)} trades, total P&L {report.total_pnl_usd} USD (realised {report.realized_pnl_usd}, "
        f"unrealised {report.unrealized_pnl_usd}), max drawdown {report.drawdown.max_drawdown_usd} USD; "
        f"{json_path} and {html_path}",
        flush=True,
    )
    return 0


def _run_poller(argv: Sequence[str]) -> int:
    sys.argv = ["python -m poller", *argv]
    try:
        runpy.run_module("poller", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["poller"]:
        # everything after `poller` is the poller's own command line
        return _run_poller(argv[1:])
    args = _parser().parse_args(argv)
    settings = OverlaySettings()
    log_dir = None if args.command in ("demo", "replay") else settings.data_dir / "logs"
    configure_logging("overlay", log_dir=log_dir, verbose=args.verbose, json_stderr=args.log_format == "json")
    try:
        if args.command == "serve":
            return anyio.run(_serve, args, settings)
        if args.command == "doctor":
            return anyio.run(_doctor, args, settings)
        if args.command == "audit":
            return anyio.run(_audit, args, settings)
        if args.command == "replay":
            return anyio.run(_replay, args, settings)
        return anyio.run(_demo, args)
    except ConfigError as exc:
        print(f"ib-overlay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
