"""Simulated time: the timestamp of the bar being replayed, read by the simulated broker and the risk gate."""

from __future__ import annotations

from datetime import UTC, datetime


class ReplayClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def set_ms(self, ts_ms: int) -> None:
        self.now = datetime.fromtimestamp(ts_ms / 1000, UTC)

    def timestamp_s(self) -> float:
        return self.now.timestamp()
