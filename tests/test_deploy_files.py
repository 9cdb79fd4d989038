"""docker-compose.override.yml, the Dockerfile and claude_desktop_config.json agree with the code they start."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_overlay_server.cli import _parser
from mcp_overlay_server.doctor import ServiceSettings
from mcp_overlay_server.http import HttpSettings
from mcp_overlay_server.settings import OverlaySettings

ROOT = Path(__file__).resolve().parent.parent
POLLER_ENV = {
    "POLLER_CONFIG",
    "POLL_INTERVAL",
    "IB_MCP_URL",
    "EVENT_BUS",
    "REDIS_URL",
    "LANGGRAPH_URL",
    "OVERLAY_TOKEN",
    "PRICE_CACHE",
    "OVERLAY_DATA_DIR",
}


def _aliases(*models: Any) -> set[str]:
    names: set[str] = set()
    for model in models:
        for info in model.model_fields.values():
            names |= set(info.validation_alias.choices) if info.validation_alias else set()
    return names


OVERLAY_ENV = _aliases(OverlaySettings, HttpSettings, ServiceSettings)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.override.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in service["environment"])


def test_compose_adds_overlay_poller_and_redis_to_ib_mcps_network(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"overlay", "poller", "redis"}
    assert "mcp_net" in compose["networks"]
    for service in services.values():
        assert service["networks"] == ["mcp_net"]
        assert "healthcheck" in service and service["restart"] == "unless-stopped"
    assert "mcp_server" in services["overlay"]["depends_on"]
    assert _env(services["overlay"])["IB_MCP_URL"] == "http://mcp_server:5002/mcp/"


def test_compose_overlay_has_the_seeds_resource_limits_and_a_data_volume(compose: dict[str, Any]) -> None:
    resources = compose["services"]["overlay"]["deploy"]["resources"]
    assert resources["limits"] == {"cpus": "2.0", "memory": "2G"}
    assert resources["reservations"] == {"memory": "1G"}
    for name in ("overlay", "poller"):
        service = compose["services"][name]
        data_dir = _env(service)["OVERLAY_DATA_DIR"]
        assert f"./data:{data_dir}" in service["volumes"]


def test_compose_commands_are_ones_the_cli_accepts(compose: dict[str, Any]) -> None:
    overlay = compose["services"]["overlay"]["command"]
    assert overlay[0] == "ib-overlay"
    args = _parser().parse_args(overlay[1:])
    assert args.command == "serve" and args.http and args.host == "0.0.0.0"
    assert overlay and f"127.0.0.1:{args.port}:{args.port}" in compose["services"]["overlay"]["ports"]
    assert f"127.0.0.1:{args.port}/healthz" in " ".join(compose["services"]["overlay"]["healthcheck"]["test"])
    assert compose["services"]["poller"]["command"] == ["ib-overlay", "poller"]


def test_compose_env_names_are_ones_the_code_reads(compose: dict[str, Any]) -> None:
    overlay_env = _env(compose["services"]["overlay"])
    assert set(overlay_env) <= OVERLAY_ENV, set(overlay_env) - OVERLAY_ENV
    assert set(_env(compose["services"]["poller"])) <= POLLER_ENV
    poller = _env(compose["services"]["poller"])
    port = _parser().parse_args(compose["services"]["overlay"]["command"][1:]).port
    assert poller["LANGGRAPH_URL"] == f"http://overlay:{port}"
    assert f"overlay:{port}" in overlay_env["OVERLAY_ALLOWED_HOSTS"].split(",")
    assert poller["OVERLAY_TOKEN"] == overlay_env["OVERLAY_TOKEN"]


def test_dockerfile_is_slim_multi_arch_and_runs_the_cli() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert bases and all(base.startswith("python:3.11-slim") for base in bases)
    cmd = json.loads(next(line for line in lines if line.startswith("CMD ")).removeprefix("CMD "))
    assert cmd[0] == "ib-overlay" and _parser().parse_args(cmd[1:]).command == "serve"
    assert any(line.startswith("USER ") and "root" not in line for line in lines)
    env_names = {part.split("=", 1)[0] for line in lines if line.startswith("ENV ") for part in shlex.split(line)[1:]}
    assert env_names - {"PATH", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"} <= OVERLAY_ENV


def test_claude_desktop_config_has_both_servers() -> None:
    servers = json.loads((ROOT / "claude_desktop_config.json").read_text())["mcpServers"]
    stdio = servers["ib-overlay"]
    assert stdio["command"] == "ib-overlay" and _parser().parse_args(stdio["args"]).command == "serve"
    assert set(stdio["env"]) <= OVERLAY_ENV
    bridge = servers["ib-overlay-compose"]
    joined = " ".join(bridge["args"])
    assert "mcp-remote" in joined and "http://localhost:8765/mcp" in joined
    assert "Authorization: Bearer ${OVERLAY_TOKEN}" in bridge["args"]
    assert servers["ib-mcp"]["args"][-1] == "http://localhost:5002/mcp/"
