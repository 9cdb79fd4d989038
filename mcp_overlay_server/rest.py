"""The seed's REST endpoints beside /mcp: the poller's webhook, starting a workflow, a run's status, the context.

Every body and answer is a pydantic model, so bad input is a 422 naming the field, and /openapi.json is
generated from the same models.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker.errors import BrokerError
from mcp_overlay_server.actions import start_workflow
from mcp_overlay_server.context import TradingContext, build_context
from mcp_overlay_server.health import HealthReport, check_health
from mcp_overlay_server.metrics import CONTENT_TYPE, render_metrics
from poller.bus import WEBHOOK_PATH
from poller.events import TriggerEvent
from workflows.run_types import RunView, WorkflowError

if TYPE_CHECKING:
    from mcp_overlay_server.app import Overlay

SCHEMA_REF = "#/components/schemas/{model}"


class ExecuteRequest(BaseModel):
    """Start a workflow now (the same as the start_strategy tool)."""

    workflow: str = Field(min_length=1, description="workflow name, e.g. 'price_alert'")
    symbol: str = Field(min_length=1, max_length=12, description="US stock symbol")
    condition: str = Field(default="manual request", description="why it runs, shown to the analyst")
    params: dict[str, Any] = Field(default_factory=dict, description="the workflow's own inputs")


class TriggerAccepted(BaseModel):
    event_id: str
    accepted: bool
    duplicate: bool
    run: RunView | None = None


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    detail: str | list[FieldProblem]


def error_response(status: int, error: str, detail: str | list[FieldProblem]) -> JSONResponse:
    return JSONResponse(ErrorBody(error=error, detail=detail).model_dump(mode="json"), status_code=status)


def _invalid(exc: ValidationError) -> JSONResponse:
    problems = [
        FieldProblem(field=".".join(str(p) for p in err["loc"]) or "body", message=err["msg"]) for err in exc.errors()
    ]
    return error_response(422, "invalid_request", problems)


async def _parse(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    try:
        raw = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        return error_response(400, "invalid_json", f"the body is not JSON: {exc}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        return _invalid(exc)


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def register_rest(server: MCPServer, overlay: Overlay) -> None:
    """Add the REST endpoints to `server`'s HTTP app (the bearer token guards them like /mcp)."""

    async def trigger(request: Request) -> Response:
        parsed = await _parse(request, TriggerEvent)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, TriggerEvent)
        existing = await overlay.store.run_for_event(parsed.event_id)
        if existing is not None:
            run = await overlay.runner.status(existing.workflow_id)
            return _json(TriggerAccepted(event_id=parsed.event_id, accepted=True, duplicate=True, run=run))
        await overlay.bus.publish(parsed)
        return _json(TriggerAccepted(event_id=parsed.event_id, accepted=True, duplicate=False), status=202)

    async def execute(request: Request) -> Response:
        parsed = await _parse(request, ExecuteRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, ExecuteRequest)
        if parsed.workflow not in overlay.runner.workflows:
            return error_response(
                404, "unknown_workflow", f"unknown workflow {parsed.workflow!r}; available: {overlay.runner.workflows}"
            )
        try:
            run = await start_workflow(overlay, parsed.workflow, parsed.symbol, parsed.condition, parsed.params)
        except BrokerError as exc:
            return error_response(502, "broker_error", str(exc))
        except WorkflowError as exc:
            return error_response(409, "workflow_error", str(exc))
        return _json(run)

    async def status(request: Request) -> Response:
        try:
            return _json(await overlay.runner.status(request.path_params["workflow_id"]))
        except WorkflowError as exc:
            return error_response(404, "not_found", str(exc))

    async def context(_: Request) -> Response:
        return _json(await build_context(overlay))

    async def healthz(_: Request) -> Response:
        return _json(await check_health(overlay))

    async def metrics(_: Request) -> Response:
        return Response(await render_metrics(overlay), media_type=CONTENT_TYPE)

    async def openapi(_: Request) -> Response:
        return JSONResponse(openapi_schema())

    for path, method, endpoint in (
        (WEBHOOK_PATH, "POST", trigger),
        ("/workflows/execute", "POST", execute),
        ("/workflows/{workflow_id}/status", "GET", status),
        ("/context", "GET", context),
        ("/healthz", "GET", healthz),
        ("/metrics", "GET", metrics),
        ("/openapi.json", "GET", openapi),
    ):
        server.custom_route(path, methods=[method])(endpoint)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(model=model.__name__)}


def _answer(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def openapi_schema() -> dict[str, Any]:
    """OpenAPI 3.1 for the REST endpoints, with components generated from the pydantic models."""
    models: list[type[BaseModel]] = [TriggerEvent, ExecuteRequest, TriggerAccepted, RunView, TradingContext]
    models += [HealthReport, ErrorBody]
    _, definitions = models_json_schema([(m, "validation") for m in models], ref_template=SCHEMA_REF)
    errors = {
        "401": _answer("missing or wrong bearer token", ErrorBody),
        "422": _answer("the body does not match the schema; `detail` names each field", ErrorBody),
    }
    body = {"required": True, "content": {"application/json": {"schema": _ref(ExecuteRequest)}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "IB MCP Overlay REST API", "version": "0.1.0"},
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            WEBHOOK_PATH: {
                "post": {
                    "summary": "A trigger event from the poller; idempotent by event_id",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(TriggerEvent)}}},
                    "responses": {
                        "202": _answer("accepted for handling", TriggerAccepted),
                        "200": _answer("seen before: the run it started", TriggerAccepted),
                        **errors,
                    },
                }
            },
            "/workflows/execute": {
                "post": {
                    "summary": "Start a workflow now; runs until it finishes or waits for approval",
                    "requestBody": body,
                    "responses": {
                        "200": _answer("the run", RunView),
                        "404": _answer("unknown workflow", ErrorBody),
                        "502": _answer("IB_MCP failed", ErrorBody),
                        **errors,
                    },
                }
            },
            "/workflows/{workflow_id}/status": {
                "get": {
                    "summary": "One workflow run",
                    "parameters": [
                        {"name": "workflow_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {"200": _answer("the run", RunView), "404": _answer("no such run", ErrorBody)},
                }
            },
            "/context": {"get": {"summary": "The trading context", "responses": {"200": _answer("", TradingContext)}}},
            "/healthz": {
                "get": {
                    "summary": "Health (no token needed)",
                    "security": [],
                    "responses": {"200": _answer("health report", HealthReport)},
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }
