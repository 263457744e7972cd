#!/usr/bin/env bash
# twlab set-up and entry point for a fresh Debian/Ubuntu machine, as root.
#   bash setup.sh run     set up, then run every experiment (loopback + lab namespaces) and show the claims ledger
#   bash setup.sh test    set up, then run the test suite
#   bash setup.sh bench   set up, then run the benchmarks (benchmarks/README.md)
#   bash setup.sh install set up only
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-install}"
shift || true

log() { printf 'setup: %s\n' "$*" >&2; }

missing=()
command -v tshark >/dev/null || missing+=(tshark)
command -v tcpdump >/dev/null || missing+=(tcpdump)
command -v iptables >/dev/null || missing+=(iptables)
command -v ip >/dev/null || missing+=(iproute2)
command -v nstat >/dev/null || missing+=(iproute2)
command -v gcc >/dev/null || missing+=(gcc)
dpkg -s libnetfilter-queue-dev >/dev/null 2>&1 || missing+=(libnetfilter-queue-dev)
dpkg -s libnfnetlink-dev >/dev/null 2>&1 || missing+=(libnfnetlink-dev)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"],"Python.h")))' \
  2>/dev/null || missing+=(python3-dev)
# the test suite validates the Vagrantfile; without Recommends vagrant is 53 small packages, no hypervisor
if [ "$mode" = test ]; then command -v vagrant >/dev/null || missing+=(vagrant); fi
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (sudo bash setup.sh $mode)"
    exit 3
  fi
  log "installing Debian packages: ${missing[*]}"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log "python3 >= 3.11 is needed"; exit 3; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.twlab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing twlab and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev,nfqueue,accel]'
  touch "$stamp"
fi

# the optional compiled accelerator (mypyc): rebuilt when a compiled source changed since the last build;
# without a compiler it says so in one line and the pure-Python modules are used
.venv/bin/python -m lab.build --if-needed || true

case "$mode" in
  install) log "ready: .venv/bin/twlab doctor" ;;
  run) exec .venv/bin/twlab run all "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  bench) exec .venv/bin/python -m benchmarks "$@" ;;
  *) log "unknown mode '$mode': use run, test, bench or install"; exit 2 ;;
esac
