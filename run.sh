#!/usr/bin/env bash
# Start the edge with everything it needs on embedded defaults (Tansu broker,
# redis-server, generated dev keys) and print a demo link.  Ctrl-C stops it all.
set -euo pipefail
source "$(dirname "$0")/scripts/venv.sh"
cd "$ROOT"
exec cps-dev up "$@"
