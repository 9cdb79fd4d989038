"""Is the market open? NYSE sessions, holidays and early closes from exchange_calendars (a maintained library).

exchange_calendars pulls in pandas (~0.9 s and ~75 MB), so it is imported on first use, not at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property
from typing import Any, Protocol
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
PRE_MARKET_OPEN = time(4, 0)
POST_MARKET_CLOSE = time(20, 0)


@dataclass(frozen=True)
class MarketStatus:
    regular_open: bool
    extended_open: bool


class MarketClock(Protocol):
    def status(self, now: datetime) -> MarketStatus: ...

    def is_trading_day(self, day: date) -> bool: ...


class ExchangeClock:
    """A real exchange calendar (default XNYS). Extended hours: 04:00 to the open, the close to 20:00 ET."""

    def __init__(self, calendar: str = "XNYS") -> None:
        self.calendar_name = calendar

    @cached_property
    def _calendar(self) -> Any:
        import exchange_calendars

        return exchange_calendars.get_calendar(self.calendar_name)

    def is_trading_day(self, day: date) -> bool:
        return bool(self._calendar.is_session(day.isoformat()))

    def status(self, now: datetime) -> MarketStatus:
        import pandas as pd

        local = now.astimezone(NEW_YORK)
        if not self.is_trading_day(local.date()):
            return MarketStatus(regular_open=False, extended_open=False)
        session = pd.Timestamp(local.date().isoformat())
        opens = self._calendar.session_open(session).to_pydatetime()
        closes = self._calendar.session_close(session).to_pydatetime()
        regular = opens <= now < closes
        day_start = datetime.combine(local.date(), PRE_MARKET_OPEN, NEW_YORK)
        day_end = datetime.combine(local.date(), POST_MARKET_CLOSE, NEW_YORK)
        extended = not regular and day_start <= now < day_end
        return MarketStatus(regular_open=regular, extended_open=extended)

    def next_session_open(self, now: datetime) -> datetime:
        import pandas as pd

        return self._calendar.next_open(pd.Timestamp(now + timedelta(seconds=1))).to_pydatetime()


class AlwaysOpen:
    """For the simulator and replays: the market never closes."""

    def status(self, now: datetime) -> MarketStatus:
        return MarketStatus(regular_open=True, extended_open=False)

    def is_trading_day(self, day: date) -> bool:
        return True


def market_clock(name: str) -> MarketClock:
    """`always` for the simulator; otherwise an exchange_calendars code such as XNYS."""
    return AlwaysOpen() if name.lower() == "always" else ExchangeClock(name)
