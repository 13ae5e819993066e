# Sourced by scripts/demo.sh and scripts/demo_fleet.sh, from the checkout's root with ROOT, OUT,
# PREFIX and DEMO_NAME set: the start both demos share. Refuses to run unless root, runs
# scripts/setup.sh (DEMO_SETUP=0 skips it), sets PY, ST and LAB (the lab's command with the
# prefix) and makes OUT an absolute, private (0700) directory.

say() { printf '\n== %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "$DEMO_NAME: run as root (network namespaces, packet capture): sudo scripts/$DEMO_NAME.sh" >&2
  exit 4
fi
if [ "${DEMO_SETUP:-1}" != 0 ]; then
  say "setup (scripts/setup.sh)"
  scripts/setup.sh
fi

PY=$ROOT/.venv/bin/python
ST=$ROOT/.venv/bin/shadowtap
LAB=("$PY" "$ROOT/scripts/lab/lab.py" --prefix "$PREFIX")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
chmod 700 "$OUT"
