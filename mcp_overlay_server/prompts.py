"""Prompts: the conversations the overlay is good at, ready to start from a client's prompt menu."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field


def register_prompts(server: MCPServer) -> None:
    @server.prompt(title="Daily market scan")
    def daily_market_scan(
        watchlist: Annotated[str, Field(description="comma-separated symbols; empty = the poller's symbols")] = "",
    ) -> str:
        """Scan the watchlist for today's opportunities (gaps, volume, technical set-ups) and rank them."""
        symbols = watchlist or "the symbols the poller watches"
        return (
            f"Run today's market scan over {symbols}: call run_market_scan, then read overlay://scans/latest. "
            "Present the top three opportunities with the reason for each (gap, volume, technical set-up), the "
            "price levels to watch, and which trigger (add_trigger) would alert on each level. Do not start any "
            "trade; ask me which idea to pursue."
        )

    @server.prompt(title="Covered-call set-up")
    def covered_call_setup(
        symbol: Annotated[str, Field(description="the stock you hold at least 100 shares of, e.g. 'TSLA'")],
    ) -> str:
        """Set up a covered call on a stock position: check the shares, pick strike and expiry, propose it."""
        return (
            f"I want to sell a covered call on {symbol.upper()}. First call get_context and check that I hold at "
            f"least 100 shares of {symbol.upper()} (one contract per 100 shares). Then call list_workflows; if "
            f"'covered_call' is available, call start_strategy(workflow='covered_call', symbol='{symbol.upper()}'). "
            "Show me the proposal (strike, expiry, premium, contracts, the analyst's rationale) and wait for my "
            "answer before calling approve_trade."
        )

    @server.prompt(title="Review pending approvals")
    def review_pending_approvals() -> str:
        """Go through every proposed order waiting for a decision, one at a time, and record my answers."""
        return (
            "Call list_pending_approvals. For each proposal, oldest first, show me symbol, side, quantity, "
            "reference price, notional in USD, paper or live, the analyst's rationale and the deadline. Ask me to "
            "approve, reject, or change the quantity or limit price, then call review_approval (it asks me in a "
            "form where the client supports it) or approve_trade with exactly my answer. Never decide for me."
        )
