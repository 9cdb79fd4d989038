"""What the poller sees (Tick) and what it publishes (TriggerEvent). Workflows read TriggerEvent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

Channel = Literal["urgent", "info"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Tick(BaseModel):
    """One price observation for one symbol. `price` is the last trade (or mid when no trade is known)."""

    symbol: str
    price: float
    ts: datetime = Field(default_factory=_utc_now)
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    volume: float | None = None
    bar_id: str | None = None


class TriggerEvent(BaseModel):
    """A trigger fired. `event_id` is unique: a redelivered event with the same id is handled once."""

    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    trigger_name: str
    symbol: str
    price: float
    condition: str
    action: str = "notify_langgraph"
    channel: Channel = "info"
    ts: datetime = Field(default_factory=_utc_now)
    indicators: dict[str, float | None] = Field(default_factory=dict)
    recent_prices: list[float] = Field(default_factory=list)

    @property
    def workflow(self) -> str | None:
        """The workflow an `execute_workflow:NAME` action asks for; `notify_langgraph` means price_alert."""
        if self.action.startswith("execute_workflow:"):
            return self.action.split(":", 1)[1].strip() or None
        if self.action == "notify_langgraph":
            return "price_alert"
        return None
