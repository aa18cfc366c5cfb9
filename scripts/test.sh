#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), lint, and run the whole test suite. Extra arguments go to pytest,
# which runs inside tests/ (e.g. `bash scripts/test.sh -m "not host"` or `bash scripts/test.sh test_host.py`).
# Without arguments it then runs the parity tests (tests/lowest_transformers.txt) again on the oldest transformers
# that requirements.txt allows, in a second venv (`scripts/setup.sh --lowest-transformers`).
# LLMGA_SKIP_LOWEST_TRANSFORMERS=1 skips that second run locally; CI (CI=true) always runs it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$root/scripts/setup.sh" | tail -n 1)
cd "$root"
"$py" -m ruff check .
cd tests
if [ $# -gt 0 ]; then
  exec "$py" -m pytest "$@"
fi
status=0
"$py" -m pytest || status=$?
if [ -n "${LLMGA_SKIP_LOWEST_TRANSFORMERS:-}" ] && [ "${CI:-}" != true ]; then
  echo "test: LLMGA_SKIP_LOWEST_TRANSFORMERS is set: the parity tests on the lowest transformers did not run" >&2
  exit "$status"
fi
lowest_py=$(bash "$root/scripts/setup.sh" --lowest-transformers | tail -n 1)
echo "test: the parity tests on transformers $("$lowest_py" -c 'import transformers; print(transformers.__version__)')" >&2
mapfile -t parity < <(grep -v -e '^#' -e '^$' lowest_transformers.txt)
"$lowest_py" -m pytest "${parity[@]}" || status=$?
exit "$status"
