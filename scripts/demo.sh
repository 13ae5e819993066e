#!/usr/bin/env bash
# The main job: installs what it needs, then extracts the captures in pcaps/ and prints their
# summaries. (Grows into the live shadow-deployment demo: see the lab issue.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
for f in pcaps/*.pcap pcaps/*.pcapng; do
  [ -e "$f" ] || continue
  echo "== $f"
  .venv/bin/shadowtap extract "$f" -o /dev/null
done
