"""Custom trigger functions written in Python.

A trigger whose condition is `plugin:MODULE:FUNCTION` calls `FUNCTION` from the file
`<plugins_dir>/MODULE.py` on every tick of its symbol:

    # plugins/gap.py
    def gap_up(view):            # view: poller.plugins.PluginView, read-only
        return len(view.recent_prices) > 1 and view.price > view.recent_prices[-2] * 1.02

The function gets the symbol, the tick's price and time, the symbol's current indicator values
(those its other triggers use) and the last `history_size` prices, and returns True or False.
Its run time is measured against a budget (50 ms by default): a function that overruns it, raises,
or returns something other than a bool is disabled with the reason (see
`TriggerEngine.disabled_reasons()`); the other triggers keep running. The budget is checked after
the call returns: Python cannot stop a function from outside, so a function that never returns
still blocks the poller — plugins are trusted code.

Each file is imported once, as the module `poller_plugin_<MODULE>` in `sys.modules`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from time import perf_counter
from types import ModuleType

DEFAULT_BUDGET_S = 0.05


@dataclass(frozen=True, slots=True)
class PluginView:
    """What a plugin function sees. `indicators` is a read-only mapping."""

    symbol: str
    price: float
    ts: datetime | None
    indicators: Mapping[str, float | None]
    recent_prices: tuple[float, ...]


PluginFunction = Callable[[PluginView], object]


class PluginError(ValueError):
    """A plugin that cannot be loaded (missing folder, file or function)."""


class PluginFailure(Exception):
    """A plugin call that broke its contract; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PluginLoader:
    """Loads plugin modules from one folder, each file once."""

    def __init__(self, plugins_dir: Path | None) -> None:
        self._plugins_dir = plugins_dir
        self._modules: dict[str, ModuleType] = {}

    def load(self, module: str, function: str) -> PluginFunction:
        if self._plugins_dir is None:
            raise PluginError(f"plugin:{module}:{function} needs a plugins folder, and none is configured")
        loaded = self._modules.get(module) or self._import(self._plugins_dir, module)
        candidate = getattr(loaded, function, None)
        if not callable(candidate):
            raise PluginError(f"{self._plugins_dir / (module + '.py')} has no function {function!r}")
        return candidate

    def _import(self, plugins_dir: Path, module: str) -> ModuleType:
        path = plugins_dir / f"{module}.py"
        if not path.is_file():
            raise PluginError(f"plugin file {path} does not exist")
        qualified = f"poller_plugin_{module}"
        spec = importlib.util.spec_from_file_location(qualified, path)
        if spec is None or spec.loader is None:
            raise PluginError(f"cannot load plugin file {path}")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as exc:
            sys.modules.pop(qualified, None)
            raise PluginError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
        self._modules[module] = loaded
        return loaded


def call_plugin(function: PluginFunction, view: PluginView, label: str, budget_s: float) -> bool:
    """Run one plugin call; raise PluginFailure if it raises, overruns `budget_s` or returns a non-bool."""
    start_s = perf_counter()
    try:
        result = function(view)
    except Exception as exc:
        raise PluginFailure(f"{label} raised {type(exc).__name__}: {exc}") from exc
    elapsed_s = perf_counter() - start_s
    if elapsed_s > budget_s:
        raise PluginFailure(f"{label} took {elapsed_s * 1000:.1f} ms, over its {budget_s * 1000:.0f} ms budget")
    if not isinstance(result, bool):
        raise PluginFailure(f"{label} returned {result!r}; a plugin must return True or False")
    return result
