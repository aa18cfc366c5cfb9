#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), lint, and run the whole test suite. Extra arguments go to pytest,
# which runs inside tests/ (e.g. `bash scripts/test.sh -m "not host"` or `bash scripts/test.sh test_host.py`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup.sh" | tail -n 1)
cd "$root"
"$py" -m ruff check .
cd tests
exec "$py" -m pytest "$@"
