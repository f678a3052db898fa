#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, real tritonserver included.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
# the tests validate docker-compose.yml with a compose client (no engine needed)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker-compose >/dev/null
fi
exec .venv/bin/python -m pytest -q "$@"
