#!/usr/bin/env bash
# Set everything up (scripts/setup.sh) and run the whole test suite; extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup.sh" | tail -n 1)
cd "$root"
"$py" -m ruff check .
exec "$py" -m pytest -c tests/pytest.ini --rootdir tests "$@"
