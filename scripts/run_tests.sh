#!/usr/bin/env bash
# Runs the test suite; exits non-zero when pytest collected no tests (pytest's exit 5) as well.
set -uo pipefail
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
