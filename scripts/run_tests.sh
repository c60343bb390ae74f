#!/usr/bin/env bash
# Run pytest from .venv; "no tests collected" (exit 5) is a failure, never a silent pass.
set -uo pipefail
venv="${VENV:-.venv}"
# Idle OpenMP threads must not spin: with two torch processes on a 2-core machine (a test and the
# training run it starts) spinning threads make each one many times slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# A crash after the last test (while the interpreter shuts down) prints every thread's Python
# stack instead of a bare "Segmentation fault": pytest hands faulthandler back to this at exit.
export PYTHONFAULTHANDLER="${PYTHONFAULTHANDLER:-1}"
"$venv/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "run_tests: pytest collected no tests (exit 5) - treating as a failure" >&2
    exit 1
fi
exit "$rc"
