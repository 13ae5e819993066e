#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs the whole test suite. As root on Debian/Ubuntu.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/capture -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
