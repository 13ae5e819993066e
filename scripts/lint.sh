#!/usr/bin/env bash
# ruff and mypy over the whole tree (scripts/test.sh runs it before the tests; both must be clean).
# mypy cannot follow pyproject's package-dir mapping (capture/ installed as shadowtap.capture, ...),
# so it checks a tree of links laid out as the installed package is.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
.venv/bin/ruff check --quiet .
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
mkdir -p "$TREE/shadowtap"
for f in shadowtap/*; do ln -s "$ROOT/$f" "$TREE/shadowtap/"; done
for stage in capture replay compare mirror; do ln -s "$ROOT/$stage" "$TREE/shadowtap/$stage"; done
ln -s "$ROOT/scripts/lab" "$TREE/shadowtap/lab"
(cd "$TREE" && "$ROOT/.venv/bin/mypy" --config-file "$ROOT/pyproject.toml" --cache-dir "$ROOT/.mypy_cache" -p shadowtap)
