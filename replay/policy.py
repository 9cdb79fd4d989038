"""Who answers the approvals in a replay: approve all, reject all, or approve orders under a notional."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PolicyKind = Literal["all", "none", "under"]


@dataclass(frozen=True)
class ApprovalPolicy:
    kind: PolicyKind = "all"
    max_notional_usd: float | None = None

    @classmethod
    def parse(cls, text: str) -> ApprovalPolicy:
        """`all`, `none`, or `under:USD` (approve an order whose notional is at most USD)."""
        name = text.strip().lower()
        if name in ("all", "none"):
            return cls(kind=name)  # type: ignore[arg-type]
        if name.startswith("under:"):
            try:
                limit = float(name.split(":", 1)[1])
            except ValueError as exc:
                raise ValueError(f"approval policy {text!r}: under:USD needs a number, e.g. under:2500") from exc
            if limit <= 0:
                raise ValueError(f"approval policy {text!r}: the notional must be positive")
            return cls(kind="under", max_notional_usd=limit)
        raise ValueError(f"approval policy {text!r}: use all, none or under:USD")

    def approves(self, notional_usd: float) -> bool:
        if self.kind == "under":
            assert self.max_notional_usd is not None
            return notional_usd <= self.max_notional_usd
        return self.kind == "all"

    def describe(self) -> str:
        return f"under:{self.max_notional_usd:g}" if self.kind == "under" else self.kind
