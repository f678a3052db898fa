#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, real tritonserver included.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
