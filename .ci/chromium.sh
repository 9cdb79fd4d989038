#!/usr/bin/env bash
# CI: headless Chromium for tests/test_replay_html.py (renders the replay report and screenshots it).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  echo "ci: installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
chromium --version
