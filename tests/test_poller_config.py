"""Loading the poller's YAML config: the seed's format, environment overrides, errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from poller.config import ConfigError, PollerConfig, load_config

EXAMPLE = Path(__file__).parent.parent / "poller" / "config.example.yaml"

SEED_TEXT = """\
polling:
  interval_seconds: 2
  symbols: [AAPL, TSLA, SPY]
triggers:
  - name: "AAPL price alert"
    symbol: AAPL
    condition: "price > 200"
    action: "notify_langgraph"
  - name: "TSLA momentum"
    symbol: TSLA
    condition: "percent_change_5min > 1.5"
    action: "execute_workflow:momentum_trade"
"""

BLOCK_LIST_TEXT = """\
# poller/config.yaml
polling:
  interval_seconds: 2
  symbols:
    - AAPL
    - TSLA
    - SPY

triggers:
  - name: "AAPL price alert"
    symbol: AAPL
    condition: "price > 200"
    action: "notify_langgraph"

  - name: "TSLA momentum"
    symbol: TSLA
    condition: "percent_change_5min > 1.5"
    action: "execute_workflow:momentum_trade"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poller.yaml"
    path.write_text(text)
    return path


def check_seed_config(config: PollerConfig) -> None:
    assert config.interval_seconds == 2
    assert config.symbols == ["AAPL", "TSLA", "SPY"]
    assert [(t.name, t.symbol, t.condition, t.action) for t in config.triggers] == [
        ("AAPL price alert", "AAPL", "price > 200", "notify_langgraph"),
        ("TSLA momentum", "TSLA", "percent_change_5min > 1.5", "execute_workflow:momentum_trade"),
    ]


def test_example_file_is_the_seed_text_and_loads() -> None:
    assert EXAMPLE.read_text() == SEED_TEXT
    check_seed_config(load_config(EXAMPLE, env={}))


def test_block_list_form_loads(tmp_path: Path) -> None:
    check_seed_config(load_config(write(tmp_path, BLOCK_LIST_TEXT), env={}))


def test_optional_trigger_fields(tmp_path: Path) -> None:
    text = SEED_TEXT.replace(
        '    action: "notify_langgraph"\n',
        '    action: "notify_langgraph"\n    channel: urgent\n    cooldown_s: 300\n'
        "    expires_at: 2026-12-31T21:00:00Z\n    once_per_bar: true\n    enabled: false\n",
    )
    alert = load_config(write(tmp_path, text), env={}).triggers[0]
    assert (alert.channel, alert.cooldown_s, alert.once_per_bar, alert.enabled) == ("urgent", 300, True, False)
    assert alert.expires_at is not None and alert.expires_at.isoformat() == "2026-12-31T21:00:00+00:00"


def test_poll_interval_environment_override() -> None:
    assert load_config(EXAMPLE, env={"POLL_INTERVAL": "0.5"}).interval_seconds == 0.5
    with pytest.raises(ConfigError, match="POLL_INTERVAL='soon'"):
        load_config(EXAMPLE, env={"POLL_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match="> 0"):
        load_config(EXAMPLE, env={"POLL_INTERVAL": "0"})


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLL_INTERVAL", "7")
    assert load_config(EXAMPLE).interval_seconds == 7


@pytest.mark.parametrize(
    ("old", "new", "line", "column", "fragment"),
    [
        ("symbols: [AAPL, TSLA, SPY]", "symbols: [AAPL, TSLA, SPY", 4, 9, "YAML syntax error"),
        ("  interval_seconds: 2\n", "  interval_seconds: 2\n  interval: 3\n", 3, 3, "unknown key 'interval'"),
        (
            '    action: "notify_langgraph"\n',
            '    action: "notify_langgraph"\n    colour: red\n',
            9,
            5,
            "triggers[0].colour: unknown key 'colour'; allowed here: name, symbol, condition",
        ),
        ("interval_seconds: 2", "interval_seconds: fast", 2, 21, "polling.interval_seconds: Input should be"),
        ("interval_seconds: 2", "interval_seconds: -1", 2, 21, "greater than 0"),
        (
            'condition: "price > 200"',
            'condition: "price >> 200"',
            7,
            24,
            "triggers[0].condition: condition 'price >> 200': expected a number",
        ),
        (
            'condition: "percent_change_5min > 1.5"',
            "condition: percent_chang_5min > 1.5",
            11,
            16,
            "unknown name 'percent_chang_5min'",
        ),
        ('action: "execute_workflow:momentum_trade"', "action: trade", 12, 13, "unknown action 'trade'"),
        ('name: "TSLA momentum"', 'name: "AAPL price alert"', 9, 11, "a second trigger is named 'AAPL price alert'"),
        ("symbol: TSLA", "symbol: MSFT", 10, 13, "add MSFT to polling.symbols"),
        ("    symbol: TSLA\n", "    symbol: TSLA\n    symbol: SPY\n", 11, 5, "key 'symbol' appears twice"),
        ("    symbol: TSLA\n", "", 9, 5, "triggers[1].symbol: missing required key 'symbol'"),
        ("  - name", "  - nam", 5, 5, "unknown key 'nam'"),
    ],
)
def test_errors_name_the_file_line_and_problem(
    tmp_path: Path, old: str, new: str, line: int, column: int, fragment: str
) -> None:
    assert old in SEED_TEXT
    path = write(tmp_path, SEED_TEXT.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    error = caught.value
    assert (error.path, error.line, error.column) == (path, line, column)
    assert str(error).startswith(f"{path}:{line}:{column}: ")
    assert fragment in str(error)


@pytest.mark.parametrize(("text", "fragment"), [("", "the file is empty"), ("- AAPL\n", "must be a mapping")])
def test_wrong_shapes(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), env={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml", env={})


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = SEED_TEXT.replace("interval_seconds: 2", "interval_seconds: fast").replace("symbol: AAPL", "sym: AAPL")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env={})
    message = str(caught.value)
    assert "polling.interval_seconds" in message
    assert "(line 6) triggers[0].sym: unknown key 'sym'" in message
