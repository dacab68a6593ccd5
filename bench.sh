#!/usr/bin/env bash
# The benchmark: broker, Redis, the edge and a bare-302 baseline on pinned cores,
# wrk as load generator; appends its tables to bench/RESULTS.md.  Args go to cps-bench.
set -euo pipefail
source "$(dirname "$0")/scripts/venv.sh"
cd "$ROOT"
need_debian_package wrk wrk
exec cps-bench "$@"
