"""Pacing: IB's Web API limits per endpoint, shared by every worker of one IB user.

Limits from IBKR's Web API documentation, "Pacing Limitations"
(https://www.interactivebrokers.com/campus/ibkr-api-page/cpapi-v1/#pacing-limitations; the same figures are
encoded by the ibkr_api client's RateLimiter, hexdocs.pm/ibkr_api): the Client Portal Gateway allows 10
requests per second in all; /iserver/marketdata/snapshot 10/s; /iserver/account/orders, /iserver/account/trades,
/portfolio/accounts 1 per 5 s; /tickle 1/s; /iserver/marketdata/history 5 at once (kept here as 5/s).
A caller over the limit waits its turn (queues); nothing is dropped. The gateway answers 429 when a limit
is broken anyway (another client of the same user): BrokerClient backs off and retries.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import anyio

from broker import ib_mcp_tools as ib


@dataclass(frozen=True)
class Pace:
    requests: int
    per_s: float


GATEWAY_PACE = Pace(10, 1.0)
ENDPOINT_PACES: Mapping[str, Pace] = {
    ib.SNAPSHOT: Pace(10, 1.0),
    ib.LIVE_ORDERS: Pace(1, 5.0),
    ib.TRADES: Pace(1, 5.0),
    ib.ACCOUNTS: Pace(1, 5.0),
    ib.TICKLE: Pace(1, 1.0),
    ib.HISTORY: Pace(5, 1.0),
}
GLOBAL_KEY = "*"


class Pacer(Protocol):
    async def acquire(self, tool: str) -> None:
        """Return when a call of `tool` may go out now without breaking a limit."""


def _paces_for(tool: str) -> list[tuple[str, Pace]]:
    paces = [(GLOBAL_KEY, GATEWAY_PACE)]
    if tool in ENDPOINT_PACES:
        paces.append((tool, ENDPOINT_PACES[tool]))
    return paces


class LocalPacer:
    """Sliding windows in this process: enough for one worker."""

    def __init__(self) -> None:
        self._sent: dict[str, deque[float]] = {}
        self._lock = anyio.Lock()

    def _wait_s(self, key: str, pace: Pace, now: float) -> float:
        sent = self._sent.setdefault(key, deque())
        while sent and now - sent[0] >= pace.per_s:
            sent.popleft()
        return 0.0 if len(sent) < pace.requests else pace.per_s - (now - sent[0])

    async def acquire(self, tool: str) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                wait_s = max(self._wait_s(key, pace, now) for key, pace in _paces_for(tool))
                if wait_s <= 0:
                    for key, _ in _paces_for(tool):
                        self._sent[key].append(now)
                    return
                await anyio.sleep(wait_s)


# Atomically, on Redis's clock (workers' clocks may disagree): drop entries older than the window from every
# key's sorted set; if every key has room, add this call to all of them and return 0; else return the
# milliseconds until the fullest key has room.
_ACQUIRE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local member = ARGV[2] .. '-' .. now
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local key_wait = tonumber(oldest[2]) + window - now
    if key_wait > wait then wait = key_wait end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, tonumber(ARGV[2 + 2 * i]) + 1000)
end
return 0
"""


class RedisPacer:
    """The same windows kept in Redis, so N workers of one IB user together stay within one user's limits."""

    def __init__(self, redis: object, *, prefix: str = "overlay:pacing") -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_ACQUIRE_LUA)  # type: ignore[attr-defined]
        self._sequence = 0
        self._client_id = uuid.uuid4().hex

    async def acquire(self, tool: str) -> None:
        paces = _paces_for(tool)
        keys = [f"{self._prefix}:{key}" for key, _ in paces]
        while True:
            self._sequence += 1
            args: list[object] = [0, f"{self._client_id}-{self._sequence}"]
            for _, pace in paces:
                args += [pace.requests, int(pace.per_s * 1000)]
            wait_ms = int(await self._script(keys=keys, args=args))
            if wait_ms <= 0:
                return
            await anyio.sleep(wait_ms / 1000)
