#!/usr/bin/env bash
# Installs everything shadowtap needs on a Debian/Ubuntu machine, as root: apt packages, kernel
# headers for bcc, tracefs, the virtual environment (.venv) with the project and its test
# dependencies. Idempotent: a second run changes nothing and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (apt-get, kernel headers, tracefs need it)" >&2
  exit 4
fi

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc            # the virtual environment; httptools/orjson wheels need nothing more
  python3-bpfcc bpfcc-tools libbpfcc              # bcc: eBPF backend (its Python bindings are not on PyPI)
  iproute2 iputils-ping ethtool procps              # network namespaces, veth, tc for the lab and tests
  tcpdump tshark tcpreplay time                   # peers and readers of our pcaps; GNU time (benchmarks)
  libpcap0.8                                      # the pcap capture backend (through ctypes)
  nginx-light wrk hey curl openssl                # real servers and clients for tests and benchmarks (TLS certificates by openssl)
  nghttp2-client                                  # nghttp: an HTTP/2 client multiplexing many requests on one connection (curl 7.88 cannot reuse an h2c one)
  nats-server                                     # the broker agents publish to (JetStream), in tests and the lab
  default-jre-headless                            # Java for Spark in local mode (pyspark)
  chromium                                        # renders the HTML report in a test
  vagrant                                         # `vagrant validate` of the lab's Vagrantfile
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel headers for bcc. The running kernel's own package where the distribution has it; else
# (as on CI machines with a custom kernel) the distribution's headers linked in as build (arch
# headers) and source (common headers): BCC_KERNEL_SOURCE alone does not handle that split.
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/build/include" ]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "linux-headers-$KREL" >/dev/null 2>&1; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$hdr" ]; then
      apt-get install -y -qq linux-headers-amd64 >/dev/null
      hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    fi
    common=${hdr%-amd64}-common
    mkdir -p "$MODDIR"
    ln -sfn "$hdr" "$MODDIR/build"
    ln -sfn "$common" "$MODDIR/source"
    echo "setup: linked $hdr as the kernel headers of $KREL"
  fi
fi

# uprobes and tracepoints need tracefs.
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || echo "setup: could not mount tracefs (continuing)"
fi

# The virtual environment, on the distribution's Python so bcc's bindings match it.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# bcc's bindings (pure Python over libbcc) from the distribution, and nothing else of its packages.
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BCC_DIR=$(ls -d /usr/lib/python3/dist-packages/bcc 2>/dev/null || true)
if [ -n "$BCC_DIR" ]; then
  mkdir -p .venv/bcc-site
  ln -sfn "$BCC_DIR" .venv/bcc-site/bcc
  echo "$ROOT/.venv/bcc-site" > "$SITE/shadowtap-bcc.pth"
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[all,test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/shadowtap --version))"
