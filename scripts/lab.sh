#!/usr/bin/env bash
# The one-host lab (network namespaces; see scripts/lab/lab.py):
#   scripts/lab.sh up|down|status|env [--prefix stlab] [--port 8080] [--json] [--fleet N]
# up: namespaces <prefix>-client, -primary (demo service v1), -shadow (demo service v2);
# up --fleet 3: -primary1..3 (demo v1 + a capture agent publishing to the broker), -broker
#   (nats-server, JetStream), -shadow (demo v2), -client (scripts/lab/fleet.py);
# down: removes everything up made, also after a crash; status: what is there and whether it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || scripts/setup.sh >&2
exec .venv/bin/python scripts/lab/lab.py "$@"
