"""Mock the Anthropic Messages API at the HTTP layer with respx, using the API's real response shapes.

The anthropic SDK speaks httpx2, which respx does not patch. `mock_anthropic_client(router)` gives an
`AsyncAnthropic` whose httpx2 transport hands every request to a respx router (as an `httpx.Request`) and
turns the router's `httpx.Response` — or raised `httpx` error — back into httpx2's. Tests then write:

    router = respx.Router(assert_all_mocked=True)
    route = router.post(MESSAGES_URL).mock(return_value=httpx.Response(200, json=message_json('{"a": 1}')))
    client = mock_anthropic_client(router)
"""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
import respx

API_BASE_URL = "https://api.anthropic.com"
MESSAGES_URL = f"{API_BASE_URL}/v1/messages"
TEST_API_KEY = "sk-ant-test-key"


def respx_transport(router: respx.Router) -> httpx2.MockTransport:
    async def handle(request: httpx2.Request) -> httpx2.Response:
        mirrored = httpx.Request(
            request.method, str(request.url), headers=request.headers.multi_items(), content=request.content
        )
        try:
            response = await router.async_handler(mirrored)
        except httpx.TransportError as error:
            # httpx2 mirrors httpx's exception tree, so ReadTimeout maps to ReadTimeout, and so on.
            error_type = getattr(httpx2, type(error).__name__, httpx2.TransportError)
            raise error_type(str(error), request=request) from error
        return httpx2.Response(
            response.status_code,
            headers=response.headers.multi_items(),
            content=await response.aread(),
            request=request,
        )

    return httpx2.MockTransport(handle)


def mock_anthropic_client(router: respx.Router, *, max_retries: int = 2) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=TEST_API_KEY,
        base_url=API_BASE_URL,
        max_retries=max_retries,
        http_client=httpx2.AsyncClient(transport=respx_transport(router)),
    )


def without_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the SDK's exponential backoff (0.5 s, 1 s, ...) near zero; a retry-after header still wins."""
    monkeypatch.setattr("anthropic._base_client.INITIAL_RETRY_DELAY", 0.001)


def message_json(
    text: str,
    *,
    model: str = "claude-sonnet-5-5",
    input_tokens: int = 1200,
    output_tokens: int = 150,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    stop_reason: str = "end_turn",
    thinking: str | None = None,
) -> dict[str, Any]:
    """A Messages API response body: one text block, after a thinking block when `thinking` is given."""
    content: list[dict[str, Any]] = []
    if thinking is not None:
        content.append({"type": "thinking", "thinking": thinking, "signature": "EqQBCkYIBxgCKkA" + "x" * 40})
    content.append({"type": "text", "text": text})
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_creation_input_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        },
    }


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def error_json(status_code: int, message: str = "") -> dict[str, Any]:
    """An error response body as the API sends it."""
    error_type = _ERROR_TYPES.get(status_code, "api_error")
    return {
        "type": "error",
        "error": {"type": error_type, "message": message or error_type.replace("_", " ")},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def error_response(status_code: int, *, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status_code, json=error_json(status_code), headers={"request-id": "req_test", **(headers or {})}
    )
