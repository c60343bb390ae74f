#!/usr/bin/env bash
# Run pytest from .venv; "no tests collected" (exit 5) is a failure, never a silent pass.
set -uo pipefail
venv="${VENV:-.venv}"
"$venv/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run_tests: pytest collected no tests (exit 5) - treating as a failure" >&2
    exit 1
fi
exit "$rc"
