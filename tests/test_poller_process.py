"""`python -m poller` as a subprocess: replaying recorded bars, publishing to the real Redis, stopping on SIGTERM."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from poller.price_cache import SQLitePriceCache
from poller.redis_bus import RedisStreamBus

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parent.parent
AAPL_CSV = ROOT / "tests" / "data" / "aapl_synthetic_daily.csv"
CONFIG = """\
polling:
  interval_seconds: 0.01
  symbols: [AAPL]
triggers:
  - name: "AAPL above 165"
    symbol: AAPL
    condition: "price > 165"
  - name: "AAPL below 170"
    symbol: AAPL
    condition: "price < 170"
    channel: urgent
"""
THRESHOLDS = {"AAPL above 165": (165.0, 1), "AAPL below 170": (170.0, -1)}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def expected_fires() -> dict[str, list[float]]:
    """Edge-triggered crossings computed from the CSV by hand: fire when true and armed, re-arm when false."""
    with AAPL_CSV.open(newline="") as handle:
        closes = [float(row["close"]) for row in csv.DictReader(handle)]
    fires: dict[str, list[float]] = {}
    for name, (threshold, side) in THRESHOLDS.items():
        armed = True
        fires[name] = []
        for close in closes:
            holds = close > threshold if side > 0 else close < threshold
            if holds and armed:
                fires[name].append(close)
            armed = not holds
    return fires


def _environment(prefix: str, data_dir: Path) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if key not in {"POLL_INTERVAL", "LANGGRAPH_URL", "PRICE_CACHE"}
    }
    environment.update(
        PYTHONPATH=str(ROOT),
        EVENT_BUS="redis",
        REDIS_URL=REDIS_URL,
        EVENT_STREAM_PREFIX=prefix,
        PRICE_CACHE="sqlite",
        OVERLAY_DATA_DIR=str(data_dir),
    )
    return environment


@pytest.fixture
async def stream_prefix() -> AsyncIterator[str]:
    prefix = f"test-process:{uuid.uuid4().hex}"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.anyio
async def test_replay_process_publishes_the_expected_events_to_redis_and_stops_on_sigterm(
    tmp_path: Path, stream_prefix: str
) -> None:
    config = tmp_path / "poller.yaml"
    config.write_text(CONFIG)
    log_path = tmp_path / "poller.log"
    expected = expected_fires()
    expected_total = sum(len(prices) for prices in expected.values())
    with log_path.open("w") as log_file:
        process = await anyio.open_process(
            [sys.executable, "-m", "poller", "--config", str(config), "--source", "replay", "--bars", str(AAPL_CSV)],
            env=_environment(stream_prefix, tmp_path / "data"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    consumer = RedisStreamBus(REDIS_URL, stream_prefix=stream_prefix, consumer="test-worker")
    deliveries = consumer.deliveries()
    received: dict[str, list[float]] = {name: [] for name in expected}
    cache = SQLitePriceCache(tmp_path / "data" / "poller" / "price_cache.db")
    try:
        with anyio.fail_after(20):
            for _ in range(expected_total):
                delivery = await anext(deliveries)
                received[delivery.event.trigger_name].append(delivery.event.price)
                await delivery.ack()
            # Every bar has gone through once the price cache holds them all.
            while True:
                if len(await cache.recent("AAPL")) == 60:
                    break
                await anyio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await deliveries.aclose()
        await consumer.aclose()
        await cache.aclose()

    redis = Redis.from_url(REDIS_URL)
    published = await redis.xlen(f"{stream_prefix}:urgent") + await redis.xlen(f"{stream_prefix}:info")
    await redis.aclose()
    log_text = log_path.read_text()
    assert returncode == 0, log_text
    assert received == expected
    assert published == expected_total
    assert log_text.count("trigger fired") == expected_total
    assert "SIGTERM received" in log_text
    assert f"{expected_total} event(s)" in log_text


def test_a_bad_config_exits_2_naming_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("polling:\n  interval_seconds: 1\n  symbols: [AAPL]\ntriggers:\n  - name: x\n    symbol: MSFT\n")
    finished = subprocess.run(
        [sys.executable, "-m", "poller", "--config", str(config), "--source", "replay", "--bars", str(AAPL_CSV)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode == 2
    assert f"{config}:" in finished.stderr
    assert "condition" in finished.stderr
