#!/usr/bin/env bash
# Provisions one machine of the Vagrant lab (see the Vagrantfile), as root, from the checkout
# copied to /shadowtap:
#   vagrant_provision.sh ROLE PRIMARY_ADDR SHADOW_ADDR FRONT_NET RATE
# every machine: scripts/setup.sh (apt packages, kernel headers, .venv with shadowtap);
# primary: the demo service v1 as systemd unit shadowtap-demo; shadow: the demo service v2;
# client: the traffic generator as unit shadowtap-traffic (RATE requests/s to the primary, in runs
# of an hour, restarted). /etc/shadowtap-lab.env records the lab's addresses for vm_demo.sh.
# Idempotent: a second run rewrites the same units and restarts them.
set -euo pipefail
ROLE=$1 PRIMARY=$2 SHADOW=$3 FRONT_NET=$4 RATE=${5:-20}
PORT=8080
cd /shadowtap
scripts/setup.sh

cat > /etc/shadowtap-lab.env <<ENV
LAB_ROLE=$ROLE
LAB_PRIMARY_ADDR=$PRIMARY
LAB_SHADOW_ADDR=$SHADOW
LAB_PORT=$PORT
LAB_PRIMARY_URL=http://$PRIMARY:$PORT
LAB_SHADOW_URL=http://$SHADOW:$PORT
ENV

unit() {  # name, description, command
  cat > "/etc/systemd/system/$1.service" <<UNIT
[Unit]
Description=$2
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$3
Restart=always
RestartSec=2
WorkingDirectory=/shadowtap

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable "$1.service"
  systemctl restart "$1.service"
}

case "$ROLE" in
  primary|shadow)
    version=1; [ "$ROLE" = shadow ] && version=2
    unit shadowtap-demo "shadowtap lab demo service v$version" \
      "/shadowtap/.venv/bin/python /shadowtap/scripts/lab/demo_service.py --version $version --host 0.0.0.0 --port $PORT --name $ROLE"
    ;;
  client)
    unit shadowtap-traffic "shadowtap lab traffic generator" \
      "/shadowtap/.venv/bin/python /shadowtap/scripts/lab/traffic.py --target http://$PRIMARY:$PORT --rate $RATE --duration 3600 --allow-network $FRONT_NET"
    ;;
  *)
    echo "vagrant_provision: unknown role $ROLE (client, primary or shadow)" >&2
    exit 2
    ;;
esac
echo "vagrant_provision: $ROLE ready"
