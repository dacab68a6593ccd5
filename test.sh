#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests against real
# servers (Tansu broker, redis-server) that the tests start themselves.
set -euo pipefail
source "$(dirname "$0")/scripts/venv.sh"
cd "$ROOT"
# promtool/prometheus check the shipped alert rules and dashboard queries.
need_debian_package promtool prometheus
need_debian_package wrk wrk
echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== pytest"; exec pytest "$@"
