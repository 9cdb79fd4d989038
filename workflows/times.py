"""Times as the overlay stores them: aware UTC datetimes (kept apart from the tables so readers import no ORM)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; every time we store is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
