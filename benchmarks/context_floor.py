"""A bare `mcp` server whose one tool returns a recorded TradingContext as it is: what `get_context` would cost
if building the context took no time. What is left is the transport, the serialisation of the result and the
client's validation of it against the tool's output schema, all of which grow with the result.

`python -m benchmarks.context_floor CONTEXT_JSON_FILE` serves it over stdio.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

from mcp_overlay_server.context import TradingContext


def build_context_floor_server(context: TradingContext) -> MCPServer:
    server = MCPServer("bare-context")

    @server.tool()
    async def recorded_context() -> TradingContext:
        """Return the recorded trading context unchanged."""
        return context

    return server


if __name__ == "__main__":
    recorded = TradingContext.model_validate_json(Path(sys.argv[1]).read_text())
    build_context_floor_server(recorded).run()
