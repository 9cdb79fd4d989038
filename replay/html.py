"""The replay report as one self-contained HTML page: price with trade markers, equity, exposure, tables.

Plotly, with its JavaScript inlined (`include_plotlyjs=True`): the page opens offline, from a file, on any
machine, and stays interactive (zoom, hover on a trade). Plotly is a pure-Python wheel (no compiler, no
system libraries), so it installs on a Raspberry Pi as easily as anywhere; the cost is ~4.5 MB of inlined
JavaScript per page, which is nothing on disk.
"""

from __future__ import annotations

from html import escape

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from replay.metrics import Attribution
from replay.report import ReplayReport

BUY_COLOUR = "#1a9850"
SELL_COLOUR = "#d73027"


def equity_figure(report: ReplayReport) -> go.Figure:
    figure = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.5, 0.3, 0.2],
        vertical_spacing=0.05,
        subplot_titles=("Price (USD) and trades", "Equity (USD)", "Exposure (USD)"),
    )
    times = [point.ts for point in report.equity_curve]
    for symbol in report.settings.symbols:
        closes = [float(point.prices_usd[symbol]) for point in report.equity_curve]
        figure.add_trace(go.Scatter(x=times, y=closes, mode="lines", name=f"{symbol} close"), row=1, col=1)
    for side, colour, marker in (("BUY", BUY_COLOUR, "triangle-up"), ("SELL", SELL_COLOUR, "triangle-down")):
        trades = [trade for trade in report.trades if trade.side == side]
        if not trades:
            continue
        figure.add_trace(
            go.Scatter(
                x=[trade.ts for trade in trades],
                y=[float(trade.price_usd) for trade in trades],
                mode="markers",
                name=side.lower(),
                marker={"symbol": marker, "size": 13, "color": colour, "line": {"width": 1, "color": "#222"}},
                text=[
                    f"{trade.side} {trade.quantity:g} {trade.symbol} @ {trade.price_usd} ({trade.trigger})"
                    for trade in trades
                ],
                hoverinfo="text+x",
            ),
            row=1,
            col=1,
        )
    figure.add_trace(
        go.Scatter(x=times, y=[float(point.equity_usd) for point in report.equity_curve], name="equity"),
        row=2,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=times,
            y=[float(point.exposure_usd) for point in report.equity_curve],
            name="exposure",
            fill="tozeroy",
        ),
        row=3,
        col=1,
    )
    figure.update_layout(height=820, margin={"l": 60, "r": 20, "t": 40, "b": 30}, legend={"orientation": "h"})
    return figure


def _table(headers: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _attribution_table(lines: list[Attribution]) -> str:
    return _table(
        ["name", "fills", "buys", "sells", "bought USD", "sold USD", "commissions USD", "realised P&L USD", "win rate"],
        [
            [
                line.name,
                line.fills,
                line.buys,
                line.sells,
                line.bought_usd,
                line.sold_usd,
                line.commissions_usd,
                line.realized_pnl_usd,
                "-" if line.win_rate is None else f"{line.win_rate:.0%}",
            ]
            for line in lines
        ],
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.summary td:first-child { font-weight: 600; }
"""


def _commission_text(commission: dict[str, str]) -> str:
    return (
        f"${commission['per_share_usd']}/share, min ${commission['minimum_usd']}, "
        f"cap {commission['maximum_pct_of_value']}% of value"
    )


def render_html(report: ReplayReport) -> str:
    settings = report.settings
    summary = _table(
        ["figure", "value"],
        [
            ["period", f"{settings.first_bar:%Y-%m-%d} to {settings.last_bar:%Y-%m-%d} ({settings.bars} bars)"],
            ["symbols", ", ".join(settings.symbols)],
            ["starting equity USD", report.starting_equity_usd],
            ["final equity USD", report.final_equity_usd],
            ["total P&L USD", report.total_pnl_usd],
            ["realised / unrealised P&L USD", f"{report.realized_pnl_usd} / {report.unrealized_pnl_usd}"],
            ["commissions USD", report.commissions_usd],
            ["win rate", "-" if report.win_rate is None else f"{report.win_rate:.0%}"],
            ["max drawdown", f"{report.drawdown.max_drawdown_usd} USD ({report.drawdown.max_drawdown_pct:.2f}%)"],
            ["max exposure USD", report.max_exposure_usd],
            ["Claude calls / cost USD", f"{report.claude.calls} / {report.claude.cost_usd:.4f}"],
            ["analyst / approvals", f"{settings.analyst} / {settings.approval_policy}"],
            ["slippage bps / commission", f"{settings.slippage_bps} / {_commission_text(settings.commission)}"],
        ],
    )
    trades = _table(
        [
            "time",
            "symbol",
            "side",
            "quantity",
            "price USD",
            "commission USD",
            "realised P&L USD",
            "workflow",
            "trigger",
        ],
        [
            [
                f"{trade.ts:%Y-%m-%d %H:%M}",
                trade.symbol,
                trade.side,
                f"{trade.quantity:g}",
                trade.price_usd,
                trade.commission_usd,
                trade.realized_pnl_usd,
                trade.workflow,
                trade.trigger,
            ]
            for trade in report.trades
        ],
    )
    chart = equity_figure(report).to_html(full_html=False, include_plotlyjs=True, div_id="replay-chart")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Replay report: {escape(", ".join(settings.symbols))}</title>
<style>{STYLE}</style></head>
<body>
<h1>Replay report: {escape(", ".join(settings.symbols))}</h1>
<div class="summary">{summary}</div>
{chart}
<h2>P&amp;L by workflow</h2>{_attribution_table(report.by_workflow)}
<h2>P&amp;L by trigger</h2>{_attribution_table(report.by_trigger)}
<h2>Trades</h2>{trades}
<h2>Definitions</h2><pre>{escape(report.definitions)}</pre>
</body></html>
"""
