"""CI only: forwards 127.0.0.1:LISTEN to the overlay at TARGET, adding the bearer token from OVERLAY_TOKEN.

The conformance suite cannot send an Authorization header; the overlay keeps its auth on and this proxy is the
authorised client. The Host and Origin headers pass through unchanged, so the suite's DNS-rebinding scenario
still reaches the overlay's own Host check.
"""

import os
import sys

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import StreamingResponse

LISTEN_PORT, TARGET = int(sys.argv[1]), sys.argv[2].rstrip("/")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "authorization"}
client = httpx.AsyncClient(timeout=None)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["authorization"] = f"Bearer {os.environ['OVERLAY_TOKEN']}"
    upstream = client.build_request(
        request.method,
        f"{TARGET}{request.url.path}",
        params=request.query_params,
        headers=headers,
        content=await request.body(),
    )
    response = await client.send(upstream, stream=True)
    answer = StreamingResponse(
        response.aiter_raw(),
        status_code=response.status_code,
        headers={k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP},
        background=None,
    )
    await answer(scope, receive, send)
    await response.aclose()


uvicorn.run(app, host="127.0.0.1", port=LISTEN_PORT, log_level="warning")
