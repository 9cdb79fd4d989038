"""Fault injection: make the simulated gateway fail the way the real one does, on demand, for tests.

market.faults.fail_next(SNAPSHOT, times=2)             # the next two snapshot calls fail (HTTP 503)
market.faults.lose_next_order_answer()                 # the next accepted order exists, the caller gets an error
market.faults.authenticated = False                    # the gateway session has expired
"""

from __future__ import annotations

from collections import defaultdict, deque

from broker.sim.errors import GatewayError

DEFAULT_FAILURE_STATUS = 503
DEFAULT_FAILURE_MESSAGE = "Service Unavailable"
LOST_ANSWER_MESSAGE = "ReadTimeout: the gateway did not answer in time"


class FaultPlan:
    def __init__(self) -> None:
        self.authenticated = True
        self._failures: dict[str, deque[GatewayError]] = defaultdict(deque)
        self._lost_order_answers: deque[GatewayError] = deque()

    def fail_next(
        self,
        tool: str,
        times: int = 1,
        status_code: int | None = DEFAULT_FAILURE_STATUS,
        message: str = DEFAULT_FAILURE_MESSAGE,
    ) -> None:
        """The next `times` calls of `tool` fail before touching the market. status_code None = no answer."""
        self._failures[tool].extend(GatewayError(status_code, message) for _ in range(times))

    def lose_next_order_answer(
        self, times: int = 1, status_code: int | None = None, message: str = LOST_ANSWER_MESSAGE
    ) -> None:
        """The next `times` orders are accepted and live at the broker, but the call that placed them fails."""
        self._lost_order_answers.extend(GatewayError(status_code, message) for _ in range(times))

    def clear(self) -> None:
        self.authenticated = True
        self._failures.clear()
        self._lost_order_answers.clear()

    def take_failure(self, tool: str) -> GatewayError | None:
        pending = self._failures.get(tool)
        return pending.popleft() if pending else None

    def take_lost_order_answer(self) -> GatewayError | None:
        return self._lost_order_answers.popleft() if self._lost_order_answers else None
