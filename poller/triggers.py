"""Triggers: configured conditions on one symbol each, evaluated on every tick of that symbol.

Firing rules (all times are `Tick.ts`, so a replay behaves like live polling):
- A trigger fires when its condition is true and it is *armed*. Firing disarms it; the condition
  being false on a later tick re-arms it. So `price > 200` fires once when the price goes above 200
  and again only after a tick at or below 200. A trigger starts armed: if the condition already
  holds on its first tick, it fires then. An *unknown* condition (an indicator still warming up, see
  `poller.conditions`) neither fires nor re-arms.
- `cooldown_s`: after firing, no new fire for that many seconds. A re-armed trigger whose condition
  is true when the cooldown ends fires then.
- `expires_at`: from that time on the trigger is never evaluated; `disabled_reasons()` says so.
- `once_per_bar`: at most one fire per `Tick.bar_id` (ticks without a bar id are not limited).
- `channel`, `action`: copied into the TriggerEvent.
- A plugin trigger (`plugin:module:function`, see `poller.plugins`) that raises, overruns its time
  budget or returns a non-bool is disabled with the reason; `set_enabled(name, True)` retries it.

Every indicator is computed once per symbol per tick, however many triggers read it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field, field_validator

from poller.conditions import (
    ExpressionCondition,
    FieldRef,
    PluginCondition,
    Values,
    describe,
    parse_condition,
)
from poller.events import Channel, Tick, TriggerEvent
from poller.indicators import NEW_YORK, IndicatorBank, IndicatorRef
from poller.plugins import DEFAULT_BUDGET_S, PluginFailure, PluginLoader, PluginView, call_plugin

log = logging.getLogger(__name__)

SEED_SIZE = 500
_ACTION = re.compile(r"notify_langgraph|execute_workflow:[A-Za-z_][\w-]*")


def _as_utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class TriggerSpec(BaseModel):
    """One configured trigger. Invalid conditions and actions are rejected with the reason."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    symbol: str = Field(min_length=1)
    condition: str
    action: str = "notify_langgraph"
    channel: Channel = "info"
    cooldown_s: float = Field(default=0, ge=0)
    expires_at: datetime | None = None
    once_per_bar: bool = False
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _strip_name(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("a trigger name cannot be blank")
        return stripped

    @field_validator("symbol")
    @classmethod
    def _normalise_symbol(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("condition")
    @classmethod
    def _check_condition(cls, value: str) -> str:
        parse_condition(value)
        return value

    @field_validator("action")
    @classmethod
    def _check_action(cls, value: str) -> str:
        if _ACTION.fullmatch(value) is None:
            raise ValueError(f"unknown action {value!r}; use 'notify_langgraph' or 'execute_workflow:<workflow name>'")
        return value

    @field_validator("expires_at")
    @classmethod
    def _aware_expiry(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _as_utc(value)


Check = Callable[[Values, Values], bool | None]


class _Trigger:
    """A spec plus its run-time state. `active` and `expires_s` are plain attributes (infinity: never
    expires) because `on_tick` reads them for every trigger on every tick."""

    __slots__ = (
        "active",
        "armed",
        "bank",
        "check",
        "disabled_reason",
        "expires_s",
        "last_fire_bar",
        "last_fire_s",
        "released_keys",
        "reported",
        "spec",
    )

    def __init__(
        self,
        spec: TriggerSpec,
        bank: IndicatorBank,
        check: Check,
        reported: tuple[tuple[str, int], ...] | None,
        released_keys: tuple[str, ...],
    ) -> None:
        self.spec = spec
        self.bank = bank
        self.check = check
        # None means "report every indicator of the symbol" (plugin triggers).
        self.reported = reported
        self.released_keys = released_keys
        self.expires_s = math.inf if spec.expires_at is None else spec.expires_at.timestamp()
        self.armed = True
        self.last_fire_s: float | None = None
        self.last_fire_bar: str | None = None
        self.disabled_reason: str | None = None
        self.active = spec.enabled

    def set_enabled(self, enabled: bool) -> None:
        self.spec = self.spec.model_copy(update={"enabled": enabled})
        if enabled:
            self.armed = True
            self.disabled_reason = None
        self.active = enabled

    def disable(self, reason: str) -> None:
        self.disabled_reason = reason
        self.active = False


class TriggerEngine:
    """Holds the triggers and each symbol's indicators; turns ticks into TriggerEvents."""

    def __init__(
        self,
        specs: Iterable[TriggerSpec] = (),
        *,
        history_size: int = 50,
        plugins_dir: Path | None = None,
        plugin_budget_s: float = DEFAULT_BUDGET_S,
        session_tz: tzinfo = NEW_YORK,
    ) -> None:
        self._history_size = history_size
        self._plugin_budget_s = plugin_budget_s
        self._session_tz = session_tz
        self._plugins = PluginLoader(plugins_dir)
        self._banks: dict[str, IndicatorBank] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._by_symbol: dict[str, list[_Trigger]] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: TriggerSpec) -> None:
        """Add a trigger, replacing one with the same name. Raises ValueError for a plugin that won't load."""
        bank = self._bank(spec.symbol)
        condition = parse_condition(spec.condition)
        if isinstance(condition, PluginCondition):
            trigger = self._plugin_trigger(spec, bank, condition)
        else:
            trigger = self._expression_trigger(spec, bank, condition)
        self.remove(spec.name)
        self._triggers[spec.name] = trigger
        self._by_symbol.setdefault(spec.symbol, []).append(trigger)

    def remove(self, name: str) -> bool:
        trigger = self._triggers.pop(name, None)
        if trigger is None:
            return False
        self._by_symbol[trigger.spec.symbol].remove(trigger)
        for key in trigger.released_keys:
            trigger.bank.release(key)
        return True

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Enable or disable a trigger; enabling re-arms it and clears a run-time failure."""
        trigger = self._triggers.get(name)
        if trigger is None:
            return False
        trigger.set_enabled(enabled)
        return True

    def specs(self) -> list[TriggerSpec]:
        return [trigger.spec for trigger in self._triggers.values()]

    def symbols(self) -> set[str]:
        """Symbols that enabled triggers watch."""
        return {trigger.spec.symbol for trigger in self._triggers.values() if trigger.spec.enabled}

    def disabled_reasons(self) -> dict[str, str]:
        """Triggers switched off at run time (a failing plugin, an expiry), with why."""
        return {
            name: trigger.disabled_reason
            for name, trigger in self._triggers.items()
            if trigger.disabled_reason is not None
        }

    def indicator_values(self, symbol: str) -> dict[str, float | None]:
        bank = self._banks.get(symbol.upper())
        return {} if bank is None else bank.values()

    def warm_up(self, symbol: str, prices: Sequence[float], timestamps: Sequence[datetime] | None = None) -> None:
        """Feed historical prices (oldest first) to the symbol's indicators without evaluating triggers.

        Indicators added later are seeded from the last 500 of these prices. Without timestamps the
        time-based indicators (percent_change_*, vwap) skip them.
        """
        if timestamps is not None and len(timestamps) != len(prices):
            raise ValueError(f"warm_up got {len(prices)} prices but {len(timestamps)} timestamps")
        bank = self._bank(symbol.upper())
        for index, price in enumerate(prices):
            bank.update(price, None if timestamps is None else _as_utc(timestamps[index]))

    def on_tick(self, tick: Tick) -> list[TriggerEvent]:
        """Update the tick's symbol's indicators once, then evaluate that symbol's triggers."""
        return self.on_ticks((tick,))

    def on_ticks(self, ticks: Iterable[Tick]) -> list[TriggerEvent]:
        """`on_tick` for each tick in turn (a poll cycle's batch), events in tick order. One loop for the whole
        batch: this runs for every symbol on every poll, and per-tick method calls were a good part of it."""
        banks = self._banks
        by_symbol = self._by_symbol
        events: list[TriggerEvent] = []
        for tick in ticks:
            symbol = tick.symbol
            bank = banks.get(symbol)
            if bank is None:
                symbol = symbol.upper()
                bank = self._bank(symbol)
            ts = tick.ts
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=UTC)
            now_s = ts.timestamp()
            bank.update(tick.price, ts, tick.bid, tick.ask, tick.last, tick.volume, now_s)
            triggers = by_symbol.get(symbol)
            if not triggers:
                continue
            current, previous = bank.current, bank.previous
            for trigger in triggers:
                if not trigger.active:
                    continue
                if now_s >= trigger.expires_s:
                    self._disable(trigger, f"expired at {trigger.spec.expires_at}")
                    continue
                try:
                    result = trigger.check(current, previous)
                except PluginFailure as failure:
                    self._disable(trigger, failure.reason)
                    continue
                if result is None:
                    continue
                if not result:
                    trigger.armed = True
                    continue
                if not trigger.armed or self._held_back(trigger, now_s, tick.bar_id):
                    continue
                trigger.armed = False
                trigger.last_fire_s = now_s
                trigger.last_fire_bar = tick.bar_id
                events.append(self._event(trigger, tick, ts))
        return events

    @staticmethod
    def _disable(trigger: _Trigger, reason: str) -> None:
        trigger.disable(reason)
        log.warning("trigger %r disabled: %s", trigger.spec.name, reason)

    @staticmethod
    def _held_back(trigger: _Trigger, now_s: float, bar_id: str | None) -> bool:
        spec = trigger.spec
        if spec.cooldown_s and trigger.last_fire_s is not None and now_s - trigger.last_fire_s < spec.cooldown_s:
            return True
        return spec.once_per_bar and bar_id is not None and bar_id == trigger.last_fire_bar

    def _event(self, trigger: _Trigger, tick: Tick, ts: datetime) -> TriggerEvent:
        spec = trigger.spec
        bank = trigger.bank
        if trigger.reported is None:
            indicators = bank.values()
        else:
            indicators = {name: bank.current[slot] for name, slot in trigger.reported}
        return TriggerEvent(
            trigger_name=spec.name,
            symbol=spec.symbol,
            price=tick.price,
            condition=spec.condition,
            action=spec.action,
            channel=spec.channel,
            ts=ts,
            indicators=indicators,
            recent_prices=bank.recent_prices(self._history_size),
        )

    def _bank(self, symbol: str) -> IndicatorBank:
        bank = self._banks.get(symbol)
        if bank is None:
            bank = self._banks[symbol] = IndicatorBank(
                seed_size=max(SEED_SIZE, self._history_size), session_tz=self._session_tz
            )
        return bank

    def _expression_trigger(self, spec: TriggerSpec, bank: IndicatorBank, condition: ExpressionCondition) -> _Trigger:
        slots: dict[FieldRef | IndicatorRef, int] = {}
        for operand in condition.operands:
            if isinstance(operand, FieldRef):
                slots[operand] = bank.field_slot(operand.name)
            else:
                slots[operand] = bank.acquire(operand)
        reported = tuple((describe(operand), slot) for operand, slot in slots.items())
        released = tuple(ref.key for ref in condition.indicators)
        return _Trigger(spec, bank, condition.bind(slots.__getitem__), reported, released)

    def _plugin_trigger(self, spec: TriggerSpec, bank: IndicatorBank, condition: PluginCondition) -> _Trigger:
        function = self._plugins.load(condition.module, condition.function)
        label = f"plugin {condition.module}:{condition.function}"
        symbol = spec.symbol
        history_size = self._history_size
        budget_s = self._plugin_budget_s

        def check(current: Values, previous: Values) -> bool:
            view = PluginView(
                symbol=symbol,
                price=bank.price,
                ts=bank.ts,
                indicators=MappingProxyType(bank.values()),
                recent_prices=tuple(bank.recent_prices(history_size)),
            )
            return call_plugin(function, view, label, budget_s)

        return _Trigger(spec, bank, check, None, ())
