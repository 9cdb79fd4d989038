"""Structured JSON logs in the seed's shape, to stderr (stdout belongs to the stdio MCP transport) and to a
rotated file under data/logs/.

    log.info("order filled", extra={"workflow": "price_alert", "event": "order_filled", "symbol": "AAPL",
                                    "action": "SELL", "quantity": 25, "price": 200.4, "order_id": "123"})
becomes
    {"timestamp": "2026-11-25T14:30:00.123Z", "service": "overlay", "level": "INFO", "logger": "...",
     "message": "order filled", "workflow": "price_alert", "event": "order_filled", "symbol": "AAPL", ...}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path

SEED_FIELDS = (
    "workflow",
    "workflow_id",
    "event",
    "symbol",
    "action",
    "quantity",
    "price",
    "order_id",
    "claude_reasoning",
    "trigger",
    "approval_id",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
QUIET_LOGGERS = ("httpx", "httpx2", "mcp", "uvicorn.access", "aiosqlite", "sse_starlette")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC), service, level, logger, message, then the seed's fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in SEED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(service: str, *, log_dir: Path | None, verbose: bool = False, json_stderr: bool = True) -> None:
    """Root logging for a process: JSON (or plain text) on stderr and, when `log_dir` is given, JSON in
    `log_dir/<service>.log`, rotated at 10 MB with 5 old files kept."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = JsonFormatter(service)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter if json_stderr else logging.Formatter(TEXT_FORMAT))
    root.addHandler(stderr)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        rotating = RotatingFileHandler(
            log_dir / f"{service}.log", maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
