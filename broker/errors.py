"""Typed broker failures. Each message says what happened and what to do about it."""


class BrokerError(Exception):
    """IB_MCP or the gateway answered with an error."""


class BrokerUnavailable(BrokerError):
    """IB_MCP could not be reached or did not answer in time."""


class Throttled(BrokerError):
    """The gateway answered 429 / "too many requests"; retried with backoff before this reaches a caller."""


class OrderToolsMissing(BrokerError):
    """IB_MCP runs without its Orders tools (its default .env excludes the tag)."""


class UnknownSymbol(BrokerError):
    """No US stock contract for the symbol."""


class OrderConfirmationRefused(BrokerError):
    """IB asked a confirmation question that is not on the allow-list; the order was not sent."""

    def __init__(self, message_ids: list[str], text: str) -> None:
        self.message_ids = message_ids
        self.text = text
        super().__init__(
            f"IB asked for a confirmation we may not give automatically (message ids {message_ids or '[none]'}): "
            f"{text!r}. The order was NOT placed; review it and place it yourself, or add the id to "
            "IB_REPLY_ALLOW_LIST if it is routine."
        )
