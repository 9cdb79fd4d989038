"""Structured logs in the seed's shape, rotated files, and health that says what is wrong."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_overlay_server.logging_setup import JsonFormatter, configure_logging
from mcp_overlay_server.performance import slippage_bps


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_the_seeds_fields() -> None:
    record = logging.LogRecord("workflows", logging.INFO, __file__, 1, "trade executed", None, None)
    for name, value in {
        "workflow": "momentum_trade",
        "event": "trade_executed",
        "symbol": "AAPL",
        "action": "BUY",
        "quantity": 100,
        "price": 201.5,
        "order_id": "12345",
        "claude_reasoning": "Bullish breakout",
    }.items():
        setattr(record, name, value)
    entry = json.loads(JsonFormatter("langgraph-api").format(record))
    assert entry["service"] == "langgraph-api" and entry["timestamp"].endswith("Z")
    assert entry["message"] == "trade executed" and entry["quantity"] == 100 and entry["price"] == 201.5
    assert {"workflow", "event", "symbol", "action", "order_id", "claude_reasoning"} <= set(entry)


def test_logs_go_to_stderr_and_a_rotated_file_never_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_root_logging: None
) -> None:
    configure_logging("overlay", log_dir=tmp_path / "logs")
    logging.getLogger("poller.service").info(
        "trigger fired", extra={"event": "trigger_fired", "symbol": "SPY", "price": 500.0}
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.strip().splitlines()[-1])["event"] == "trigger_fired"
    [line] = (tmp_path / "logs" / "overlay.log").read_text().splitlines()
    assert json.loads(line)["symbol"] == "SPY"
    rotating = next(h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler))
    assert rotating.maxBytes > 0 and rotating.backupCount > 0


def test_slippage_is_positive_when_worse_for_us() -> None:
    assert slippage_bps("BUY", 100.1, 100.0) == pytest.approx(10.0)
    assert slippage_bps("SELL", 100.1, 100.0) == pytest.approx(-10.0)
    assert slippage_bps("SELL", 99.9, 100.0) == pytest.approx(10.0)
