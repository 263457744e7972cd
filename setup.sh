#!/usr/bin/env bash
# twlab set-up and entry point for a fresh Debian/Ubuntu machine, as root.
#   bash setup.sh run     set up, then run every experiment (loopback + lab namespaces) and show the claims ledger
#   bash setup.sh test    set up, then run the test suite
#   bash setup.sh bench   set up, then run the benchmarks (benchmarks/README.md)
#   bash setup.sh install set up only
#   bash setup.sh kernels [VER...]  set up, then install user-mode Linux kernels (default 6.1 6.12; also 5.10, 7.2)
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
# the report's browser test (tests/integration/test_report_browser.py) opens it in headless chromium
if [ "$mode" = test ]; then command -v chromium >/dev/null || missing+=(chromium); fi
# --- user-mode Linux kernels (helper E2): modprobe for the guests' modules, patchelf for kernels needing a newer glibc
if [ "$mode" = kernels ] || [ "$mode" = test ]; then
  command -v modprobe >/dev/null || [ -x /usr/sbin/modprobe ] || missing+=(kmod)
  command -v patchelf >/dev/null || missing+=(patchelf)
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)  # Ubuntu hosts
fi
# --- end user-mode Linux kernels
# --- wave-2 experiments (helper H): a real nginx and curl, started by the lab inside its namespaces only; the
# package's own service must neither start nor stay enabled on the host (policy-rc.d during the install, then
# the unit disabled by name), and only when this script installs nginx (an admin's nginx is left alone)
command -v curl >/dev/null || missing+=(curl)
nginx_new=0
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx); nginx_new=1; fi
# --- end wave-2 experiments
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]}; run this script as root (sudo bash setup.sh $mode)"
    exit 3
  fi
  log "installing Debian packages: ${missing[*]}"
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q >/dev/null
  made_policy=0
  if [ "$nginx_new" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# twlab setup.sh: no service starts while it installs packages\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  if [ "$nginx_new" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now nginx.service >/dev/null 2>&1 || true
  fi
  [ "$rc" = 0 ] || exit "$rc"
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
# bytecode for every module (an editable install writes none, nor does Python under PYTHONDONTWRITEBYTECODE):
# each twlab command then starts ~40 ms sooner; a source edited later is compiled in memory as usual
.venv/bin/python -m compileall -q lab >/dev/null || true

# --- user-mode Linux kernels (helper E2) -----------------------------------------------------------------
# Each kernel is Debian's user-mode-linux package of one suite, fetched BY NAME into a private apt state
# (own sources.list, lists, cache and an empty dpkg status under $kernels_dir/.apt/SUITE; the host's apt
# sources and dpkg database are untouched) and unpacked with dpkg-deb into $kernels_dir/VER. A kernel built
# against a newer glibc than the host's gets that suite's libc6 beside it and a patchelf'd interpreter.
kernels_dir="${TWLAB_KERNELS:-/var/lib/twlab/kernels}"
kernel_suite() {
  case "$1" in 5.10) echo bullseye ;; 6.1) echo bookworm ;; 6.12) echo trixie ;; 7.2) echo sid ;; *) return 1 ;; esac
}
install_kernel() {
  local ver="$1" suite dest apt work opts need have
  suite="$(kernel_suite "$ver")" || { log "unknown kernel '$ver': use 5.10, 6.1, 6.12 or 7.2"; exit 2; }
  dest="$kernels_dir/$ver"
  if [ -x "$dest/linux" ] && [ -f "$dest/package" ]; then log "kernel $ver: installed ($(cat "$dest/package"))"; return 0; fi
  apt="$kernels_dir/.apt/$suite"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  : > "$apt/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
    > "$apt/sources.list"
  opts=(-q -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null/none
        -o "Dir::State::Lists=$apt/lists" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt/cache"
        -o Dir::Etc::Preferences=/dev/null/none -o Dir::Etc::PreferencesParts=/dev/null/none
        -o APT::Sandbox::User=root)
  log "kernel $ver: fetching user-mode-linux from Debian $suite (private apt state in $apt)"
  apt-get "${opts[@]}" update >/dev/null || { log "kernel $ver: apt-get update for $suite failed"; exit 3; }
  work="$(mktemp -d "$kernels_dir/.twl-$ver.XXXXXX")"
  kernel_work="$work"
  (cd "$work" && apt-get "${opts[@]}" download user-mode-linux >/dev/null) \
    || { log "kernel $ver: apt-get download user-mode-linux ($suite) failed"; exit 3; }
  mkdir -p "$work/root"
  dpkg-deb -x "$work"/user-mode-linux_*.deb "$work/root"
  dpkg-deb -f "$work"/user-mode-linux_*.deb Version > "$work/root/package.version"
  need="$(dpkg-deb -f "$work"/user-mode-linux_*.deb Depends | sed -n 's/.*libc6 (>= \([^)]*\)).*/\1/p')"
  have="$(dpkg-query -W -f '${Version}' libc6 2>/dev/null || echo 0)"
  if [ -n "$need" ] && ! dpkg --compare-versions "$have" ge "$need"; then
    log "kernel $ver: needs glibc >= $need (host has $have): adding $suite's libc6 and a patchelf'd interpreter"
    (cd "$work" && apt-get "${opts[@]}" download libc6 >/dev/null) || { log "kernel $ver: libc6 download failed"; exit 3; }
    dpkg-deb -x "$work"/libc6_*.deb "$work/root"
    cp "$work/root/usr/bin/linux.uml" "$work/root/linux"
    patchelf --set-interpreter "$dest/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
      --set-rpath "$dest/usr/lib/x86_64-linux-gnu" "$work/root/linux"
  else
    ln -s usr/bin/linux.uml "$work/root/linux"
  fi
  # modprobe -d ROOT looks in ROOT/lib/modules/RELEASE: the guest's modules without touching the host's /lib
  mkdir -p "$work/root/lib"
  ln -s ../usr/lib/uml/modules "$work/root/lib/modules"
  echo "user-mode-linux $(cat "$work/root/package.version") ($suite)" > "$work/root/package"
  rm -rf "$dest"
  mv "$work/root" "$dest"
  rm -rf "$work"
  log "kernel $ver: installed in $dest ($(cat "$dest/package"))"
}
install_kernels() {
  [ "$(id -u)" -eq 0 ] || { log "installing kernels needs root (sudo bash setup.sh kernels)"; exit 3; }
  mkdir -p "$kernels_dir"
  kernel_work=""
  trap 'rm -rf "${kernel_work:-/nonexistent}"' EXIT  # a failed download leaves no half-unpacked kernel
  local v
  for v in "$@"; do install_kernel "$v"; done
}
# --- end user-mode Linux kernels

case "$mode" in
  install) log "ready: .venv/bin/twlab doctor" ;;
  run) exec .venv/bin/twlab run all "$@" ;;
  test)  # the 6.1 UML kernel for tests/integration/test_guests.py; without it (no network) those tests skip
    set +e; (set -e; install_kernels 6.1); kernel_rc=$?; set -e
    [ "$kernel_rc" -eq 0 ] || log "user-mode Linux kernel 6.1 not installed: tests/integration/test_guests.py will skip"
    exec .venv/bin/python -m pytest "$@" ;;
  bench) exec .venv/bin/python -m benchmarks "$@" ;;
  kernels) if [ "$#" -eq 0 ]; then set -- 6.1 6.12; fi; install_kernels "$@"; exec .venv/bin/twlab kernels ;;
  *) log "unknown mode '$mode': use run, test, bench, kernels or install"; exit 2 ;;
esac
