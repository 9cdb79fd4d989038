"""The poller's YAML configuration (`poller/config.example.yaml` is the reference).

    polling:
      interval_seconds: 2
      symbols: [AAPL, TSLA, SPY]      # or a block list
    triggers:
      - name: "AAPL price alert"
        symbol: AAPL
        condition: "price > 200"
        action: "notify_langgraph"   # or "execute_workflow:<name>"
        channel: urgent               # optional: info (default) | urgent
        cooldown_s: 300               # optional, see poller.triggers for the firing rules
        expires_at: 2026-12-31T21:00:00Z
        once_per_bar: false
        enabled: true

The environment variable POLL_INTERVAL overrides `polling.interval_seconds`.

Anything wrong is reported at load time as a ConfigError naming the file, the line and column (from
YAML's node marks) and what to change: YAML syntax, unknown or repeated keys, wrong types, a condition
that does not parse (with the column inside the condition), two triggers with the same name, or a
trigger on a symbol that `polling.symbols` does not list. The last one is an error rather than a
silent addition, so a mistyped symbol in a trigger is caught instead of being polled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from poller.conditions import ConditionError
from poller.triggers import TriggerSpec

INTERVAL_ENV = "POLL_INTERVAL"


class ConfigError(ValueError):
    """A configuration the poller cannot run with; `line`/`column` are 1-based when known."""

    def __init__(self, message: str, *, path: Path, line: int | None = None, column: int | None = None) -> None:
        self.path = path
        self.line = line
        self.column = column
        where = str(path) if line is None else f"{path}:{line}:{column}"
        super().__init__(f"{where}: {message}")


class PollingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(gt=0)
    symbols: list[str] = Field(default_factory=list)

    @field_validator("symbols")
    @classmethod
    def _normalise_symbols(cls, symbols: list[str]) -> list[str]:
        cleaned = [symbol.strip().upper() for symbol in symbols]
        if any(not symbol for symbol in cleaned):
            raise ValueError("a symbol cannot be blank")
        return list(dict.fromkeys(cleaned))


class ConfigFile(BaseModel):
    """The file's shape, section by section."""

    model_config = ConfigDict(extra="forbid")

    polling: PollingSection
    triggers: list[TriggerSpec] = Field(default_factory=list)


class PollerConfig(BaseModel):
    interval_seconds: float = Field(gt=0)
    symbols: list[str]
    triggers: list[TriggerSpec]


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> PollerConfig:
    """Read and validate a poller config file; environment overrides come from `env` (default os.environ)."""
    path = Path(path)
    environment = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc
    root = _compose(text, path)
    if root is None:
        raise ConfigError("the file is empty; see poller/config.example.yaml", path=path)
    if not isinstance(root, yaml.MappingNode):
        line, column = _position(root)
        raise ConfigError(
            "the file must be a mapping with a 'polling' section and a 'triggers' list",
            path=path,
            line=line,
            column=column,
        )
    data = _construct(text, path)
    try:
        parsed = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc, root, path) from exc
    _check_triggers(parsed, root, path)
    interval_s = parsed.polling.interval_seconds
    override = environment.get(INTERVAL_ENV)
    if override is not None:
        interval_s = _interval_override(override, path)
    return PollerConfig(interval_seconds=interval_s, symbols=parsed.polling.symbols, triggers=parsed.triggers)


def _compose(text: str, path: Path) -> yaml.Node | None:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, path) from exc
    if root is not None:
        _reject_duplicate_keys(root, path)
    return root


def _construct(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, path) from exc


def _yaml_error(exc: yaml.MarkedYAMLError, path: Path) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    problem = " ".join(part for part in (exc.context, exc.problem) if part)
    if exc.context_mark is not None and exc.context_mark is not mark:
        problem += f" (the construct started at line {exc.context_mark.line + 1})"
    line = None if mark is None else mark.line + 1
    column = None if mark is None else mark.column + 1
    return ConfigError(f"YAML syntax error: {problem}", path=path, line=line, column=column)


def _position(node: yaml.Node | None) -> tuple[int, int]:
    if node is None:
        return 1, 1
    return node.start_mark.line + 1, node.start_mark.column + 1


def _reject_duplicate_keys(node: yaml.Node, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    line, column = _position(key_node)
                    raise ConfigError(
                        f"key {key_node.value!r} appears twice in this mapping; keep one",
                        path=path,
                        line=line,
                        column=column,
                    )
                seen.add(key_node.value)
            _reject_duplicate_keys(value_node, path)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, path)


def _child(node: yaml.Node | None, step: str | int) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of `step` inside `node`, or (None, None)."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == step:
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return None, node.value[step]
    return None, None


def _locate(root: yaml.Node, loc: tuple[str | int, ...], *, want_key: bool) -> yaml.Node:
    """The deepest node along `loc`; the key node of the last step when `want_key`."""
    node = root
    for index, step in enumerate(loc):
        key_node, value_node = _child(node, step)
        if value_node is None:
            return node
        if want_key and index == len(loc) - 1 and key_node is not None:
            return key_node
        node = value_node
    return node


def _section_model(loc: tuple[str | int, ...]) -> type[BaseModel]:
    if loc[:1] == ("polling",):
        return PollingSection
    if loc[:1] == ("triggers",) and len(loc) >= 2:
        return TriggerSpec
    return ConfigFile


def _dotted(loc: tuple[str | int, ...]) -> str:
    text = ""
    for step in loc:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _validation_error(exc: ValidationError, root: yaml.Node, path: Path) -> ConfigError:
    messages: list[str] = []
    first: tuple[int, int] | None = None
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind = error["type"]
        node = _locate(root, loc, want_key=kind == "extra_forbidden")
        line, column = _position(node)
        if kind == "extra_forbidden":
            allowed = ", ".join(_section_model(loc[:-1]).model_fields)
            message = f"unknown key {loc[-1]!r}; allowed here: {allowed}"
        elif kind == "missing":
            message = f"missing required key {loc[-1]!r}"
        else:
            message = _value_message(error, node)
            column = _condition_column(error, node, column)
        messages.append(f"{_dotted(loc)}: {message}" if loc else message)
        if first is None:
            first = (line, column)
        else:
            messages[-1] = f"(line {line}) {messages[-1]}"
    line, column = first or (None, None)
    return ConfigError("\n".join(messages), path=path, line=line, column=column)


def _value_message(error: Any, node: yaml.Node) -> str:
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConditionError):
        return f"condition {cause.text!r}: {cause.reason} (at column {cause.position + 1} of the condition)"
    if isinstance(cause, ValueError):
        return str(cause)
    shown = node.value if isinstance(node, yaml.ScalarNode) else error.get("input")
    return f"{error['msg']}, got {shown!r}"


def _condition_column(error: Any, node: yaml.Node, column: int) -> int:
    """Point inside a one-line condition string at the offending character."""
    cause = error.get("ctx", {}).get("error")
    if not isinstance(cause, ConditionError) or not isinstance(node, yaml.ScalarNode):
        return column
    if node.start_mark.line != node.end_mark.line:
        return column
    quote = 1 if node.style in ("'", '"') else 0
    return column + quote + cause.position


def _check_triggers(parsed: ConfigFile, root: yaml.Node, path: Path) -> None:
    polled = set(parsed.polling.symbols)
    seen: set[str] = set()
    for index, spec in enumerate(parsed.triggers):
        if spec.name in seen:
            line, column = _position(_locate(root, ("triggers", index, "name"), want_key=False))
            raise ConfigError(
                f"a second trigger is named {spec.name!r}; trigger names must be unique",
                path=path,
                line=line,
                column=column,
            )
        seen.add(spec.name)
        if spec.symbol not in polled:
            line, column = _position(_locate(root, ("triggers", index, "symbol"), want_key=False))
            raise ConfigError(
                f"trigger {spec.name!r} watches {spec.symbol}, which polling.symbols does not list: "
                f"add {spec.symbol} to polling.symbols",
                path=path,
                line=line,
                column=column,
            )


def _interval_override(value: str, path: Path) -> float:
    try:
        interval_s = float(value)
    except ValueError:
        interval_s = float("nan")
    if not interval_s > 0:
        raise ConfigError(
            f"{INTERVAL_ENV}={value!r} in the environment overrides polling.interval_seconds "
            "and must be a number of seconds > 0",
            path=path,
        )
    return interval_s
