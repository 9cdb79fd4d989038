"""Black-Scholes for European options without dividends: price, delta, and the implied volatility a
quoted price means. Pure math, shared by the simulator (which prices with it) and the workflows (which
read a quote's implied volatility and delta with it). Volatility and rate are annual, in percent."""

from __future__ import annotations

import math

IV_LOW_PCT = 0.1
IV_HIGH_PCT = 500.0
IV_BISECTIONS = 60


def _norm_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _d1_d2(spot: float, strike: float, years: float, volatility: float, rate: float) -> tuple[float, float]:
    d1 = (math.log(spot / strike) + (rate + volatility**2 / 2) * years) / (volatility * math.sqrt(years))
    return d1, d1 - volatility * math.sqrt(years)


def intrinsic_value(right: str, spot: float, strike: float) -> float:
    return max(spot - strike, 0.0) if right == "C" else max(strike - spot, 0.0)


def price(right: str, spot: float, strike: float, years: float, volatility_pct: float, rate_pct: float) -> float:
    """Option value per share; intrinsic value at or after expiry."""
    if years <= 0 or volatility_pct <= 0:
        return intrinsic_value(right, spot, strike)
    volatility, rate = volatility_pct / 100, rate_pct / 100
    d1, d2 = _d1_d2(spot, strike, years, volatility, rate)
    discount = math.exp(-rate * years)
    if right == "C":
        return spot * _norm_cdf(d1) - strike * discount * _norm_cdf(d2)
    return strike * discount * _norm_cdf(-d2) - spot * _norm_cdf(-d1)


def delta(right: str, spot: float, strike: float, years: float, volatility_pct: float, rate_pct: float) -> float:
    """dV/dS: 0..1 for a call, -1..0 for a put. A call's delta is the usual proxy for the chance that it
    finishes in the money (that a covered call is assigned)."""
    if years <= 0 or volatility_pct <= 0:
        in_the_money = spot > strike if right == "C" else spot < strike
        return (1.0 if right == "C" else -1.0) if in_the_money else 0.0
    d1, _ = _d1_d2(spot, strike, years, volatility_pct / 100, rate_pct / 100)
    return _norm_cdf(d1) if right == "C" else _norm_cdf(d1) - 1


def implied_volatility_pct(
    right: str, option_price: float, spot: float, strike: float, years: float, rate_pct: float
) -> float | None:
    """The volatility at which the model gives `option_price` (bisection; price rises with volatility).
    None when no volatility in 0.1%..500% fits (a price under intrinsic value, or an expired option)."""
    if years <= 0:
        return None
    low, high = IV_LOW_PCT, IV_HIGH_PCT
    if (
        not price(right, spot, strike, years, low, rate_pct)
        <= option_price
        <= price(right, spot, strike, years, high, rate_pct)
    ):
        return None
    for _ in range(IV_BISECTIONS):
        middle = (low + high) / 2
        if price(right, spot, strike, years, middle, rate_pct) < option_price:
            low = middle
        else:
            high = middle
    return (low + high) / 2
