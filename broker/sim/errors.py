"""How the simulated gateway says no, in the two shapes IB_MCP passes on to its MCP clients."""

from __future__ import annotations

import json
from typing import Any


class GatewayError(Exception):
    """A failed gateway call: an HTTP error answer, or (status_code None) no answer at all (timeout, reset)."""

    def __init__(self, status_code: int | None, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message

    def payload(self) -> dict[str, Any]:
        """IB_MCP's error object: HTTP errors carry the status and the gateway's body, transport errors do not."""
        if self.status_code is None:
            return {"error": "Request Error", "detail": self.message}
        body = json.dumps({"error": self.message, "statusCode": self.status_code})
        return {"error": "IBKR API Error", "status_code": self.status_code, "detail": body}


def not_authenticated() -> GatewayError:
    return GatewayError(401, "not authenticated")
