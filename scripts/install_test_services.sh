#!/usr/bin/env bash
# Debian packages the test suite drives for real, installed here so that no test downloads them:
#   chromium, chromium-driver: the browser test of the Prefect and MLflow UIs (tests/test_deployments.py);
#   postgresql: the stack on PostgreSQL stores (tests/test_postgres_stack.py).
set -euo pipefail
have_postgres() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
if command -v chromium >/dev/null && command -v chromedriver >/dev/null && have_postgres; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
# a policy-rc.d that says no: PostgreSQL installs without starting its default cluster (the test
# starts its own); one already there is left as it is
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver postgresql >/dev/null
