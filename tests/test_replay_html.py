"""The replay's HTML report renders in headless Chromium: plotly draws the chart offline (the page has no
external resource), and a screenshot is kept in test-artifacts/replay_report.png for a person to look at.

Needs the Debian package `chromium` (.ci/chromium.sh installs it).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from broker.sim.prices import load_bars_csv
from mcp_overlay_server.settings import OverlaySettings
from poller.triggers import TriggerSpec
from replay.engine import ReplayConfig, run_replay
from replay.market import parse_commission
from replay.report import write_report

pytestmark = pytest.mark.anyio

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HAND_CSV = Path(__file__).parent / "data" / "replay_hand.csv"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
]
CHROMIUM_TIMEOUT_S = 60


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chromium(*arguments: str, profile: Path) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "headless Chromium is needed: run .ci/chromium.sh (apt-get install chromium)"
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=CHROMIUM_TIMEOUT_S,
        check=True,
    )
    return done.stdout


async def test_the_html_report_renders_the_chart_in_headless_chromium(tmp_path: Path) -> None:
    config = ReplayConfig(
        bars=load_bars_csv(HAND_CSV, "AAPL"),
        triggers=[
            TriggerSpec(name="buy dip", symbol="AAPL", condition="price < 100"),
            TriggerSpec(name="take profit", symbol="AAPL", condition="price > 110"),
        ],
        commission=parse_commission("0.05,1"),
        slippage_bps=Decimal(10),
    )
    report = await run_replay(config, OverlaySettings(anthropic_api_key=None, max_order_notional_usd=5000))
    _, html_path = write_report(report, tmp_path / "report")
    html = html_path.read_text()
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']https?:""", html), "the page must be offline"

    dom = chromium("--dump-dom", html_path.as_uri(), profile=tmp_path / "profile-dom")
    assert 'id="replay-chart"' in dom
    assert dom.count('class="main-svg"') >= 1, "plotly did not draw"
    # price, buy markers, sell markers, equity, exposure
    assert len(re.findall(r'class="trace scatter', dom)) == 5

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "replay_report.png"
    screenshot.unlink(missing_ok=True)
    chromium("--window-size=1280,1600", f"--screenshot={screenshot}", html_path.as_uri(), profile=tmp_path / "p2")
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
    assert len(data) > 50_000, "a page with a drawn chart compresses to far more than an empty one"
