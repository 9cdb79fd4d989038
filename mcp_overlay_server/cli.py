"""`ib-overlay`: serve the overlay, or run the self-contained demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio

from mcp_overlay_server.settings import OverlaySettings
from poller.config import ConfigError, PollerConfig, load_config

log = logging.getLogger("ib_overlay")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ib-overlay", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (on stderr)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the overlay MCP server (stdio for Claude Desktop by default)")
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

    demo = commands.add_parser(
        "demo", help="simulated IB_MCP + overlay + poller over HTTP: a trigger fires, you approve, it fills"
    )
    demo.add_argument("--port", type=int, default=8765, help="overlay HTTP port (0 = any free port)")
    demo.add_argument("--sim-port", type=int, default=5102, help="simulated IB_MCP HTTP port (0 = any free port)")
    demo.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve the first proposal through a real MCP client, print the fill, and exit",
    )
    demo.add_argument("--data-dir", type=Path, help="where the demo keeps its databases (default: a fresh temp dir)")
    return parser


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.access", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _poller_config(path: Path | None) -> PollerConfig | None:
    return load_config(path) if path else None


async def _serve(args: argparse.Namespace) -> None:
    from mcp_overlay_server.app import open_overlay
    from mcp_overlay_server.http import build_http_app, load_or_create_token, serve_http
    from mcp_overlay_server.server import build_server

    settings = OverlaySettings()
    config = _poller_config(args.config or settings.poller_config)
    async with AsyncExitStack() as stack:
        target = None
        if args.demo:
            from mcp_overlay_server.demo import demo_market, demo_poller_config, demo_sim_server

            target = demo_sim_server(demo_market())
            config = config or demo_poller_config()
        overlay = await stack.enter_async_context(
            open_overlay(settings, poller_config=config, target=target, run_poller=not args.no_poller)
        )
        server = build_server(overlay)
        if not args.http:
            await server.run_stdio_async()
            return
        host = args.host or settings.http_host
        port = settings.http_port if args.port is None else args.port
        token = (
            settings.http_token.get_secret_value() if settings.http_token else load_or_create_token(settings.token_file)
        )
        url = await stack.enter_async_context(serve_http(build_http_app(overlay, server, token, host), host, port))
        print(
            f"overlay MCP server on {url} (bearer token in {settings.token_file})",
            file=sys.stderr,
            flush=True,
        )
        await anyio.sleep_forever()


async def _demo(args: argparse.Namespace) -> int:
    from mcp_overlay_server.demo import run_demo

    return await run_demo(
        overlay_port=args.port, sim_port=args.sim_port, auto_approve=args.auto_approve, data_dir=args.data_dir
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        if args.command == "serve":
            anyio.run(_serve, args)
            return 0
        return anyio.run(_demo, args)
    except ConfigError as exc:
        print(f"ib-overlay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
