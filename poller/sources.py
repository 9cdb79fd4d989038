"""Price sources: each turns one poll into Ticks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from broker.client import BrokerClient
from poller.events import Tick


class QuoteSource(Protocol):
    name: str

    async def poll(self, symbols: Sequence[str]) -> list[Tick]: ...


class IBMCPSource:
    """IB_MCP's snapshot tool: one batched call per cycle; symbols without a price yet are left out."""

    name = "ib_mcp"

    def __init__(self, broker: BrokerClient) -> None:
        self.broker = broker

    async def poll(self, symbols: Sequence[str]) -> list[Tick]:
        quotes = await self.broker.quotes(symbols)
        ticks: list[Tick] = []
        for quote in quotes.values():
            price = quote.price
            if price is None or quote.halted:
                continue
            ticks.append(
                Tick(
                    symbol=quote.symbol,
                    price=price,
                    ts=quote.ts,
                    bid=quote.bid,
                    ask=quote.ask,
                    last=quote.last,
                    volume=quote.volume,
                )
            )
        return ticks
