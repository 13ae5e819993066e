#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), checks ruff and mypy (scripts/lint.sh) and runs the whole
# test suite. As root on Debian/Ubuntu.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/capture -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/lint.sh
exec .venv/bin/python -m pytest "$@"
