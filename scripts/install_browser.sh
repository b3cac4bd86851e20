#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the browser test of the Prefect and MLflow UIs
# (tests/test_deployments.py); the test never downloads a browser itself.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
