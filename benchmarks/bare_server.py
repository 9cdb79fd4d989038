"""The baseline server: a bare `mcp` MCPServer with one trivial `echo` tool and nothing else.

`python -m benchmarks.bare_server` serves it over stdio. It imports only the SDK, so its cold start is what
any server built on `mcp` pays before it can answer `tools/list`.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer


def build_bare_server() -> MCPServer:
    server = MCPServer("bare-echo")

    @server.tool()
    async def echo(text: str = "ping") -> str:
        """Return `text` unchanged."""
        return text

    return server


if __name__ == "__main__":
    build_bare_server().run()
