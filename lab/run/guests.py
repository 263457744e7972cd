"""User-mode Linux guests: other kernels for the same experiments.

A guest is Debian's `user-mode-linux` kernel of one suite (installed by `bash setup.sh kernels VER` into
kernels_dir()/VER) booted as an ordinary host process: the host's root read-only through hostfs, the run
folder mounted writable at the same path, tmpfs for /tmp, /run and /var/tmp, the kernel's own modules
(TUN, veth, IPv6, netfilter, bridge) loaded with `modprobe -d`, and the iptables flavour (nft or legacy) that
can put a rule into a base chain of its filter table (none on Debian's 7.2: experiments needing it could not run).
Its init (a generated shell script in the run folder) runs `python -m lab run NAMES --json` and powers the
guest off; results, captures and events land in the host's run folder like those of a host run.

The guest never outlives its run: a boot deadline and a run deadline (both scaled), every process of the
guest recorded in the run's ledger by pid (UML's helper threads are processes of their own and survive the
main one, so the whole process group is swept by exact pid), a sweep on every exit path, and the kernel dies with
the thread that started it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import EnvironmentProblem, UsageError
from lab.run.context import Experiment, new_run_id, scaled
from lab.run.resources import Ledger, die_with_parent

KERNELS_ENV = "TWLAB_KERNELS"
DEFAULT_KERNELS_DIR = Path("/var/lib/twlab/kernels")
SUITES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie", "7.2": "sid"}   # Debian's user-mode-linux
GUEST_MEMORY = "768M"
BOOT_DEADLINE_S = 30.0          # boot to the guest's record (guest.json): 3-10 s here; scaled
GUEST_SLOWDOWN = 4.0            # an experiment in a UML guest vs on the host (every syscall is ptraced)
RUN_MARGIN_S = 60.0             # python start-up, module loading, power-off
POLL_S = 0.1
GUEST_JOBS = 1                  # experiments at once inside a guest: it has one CPU, and verdicts must not need speed
GUEST_MODULES = ("tun", "veth", "ipv6", "configs", "ip_tables", "ip6_tables", "iptable_filter", "ip6table_filter",
                 "iptable_mangle", "iptable_raw", "nfnetlink_queue", "xt_NFQUEUE", "xt_tcpudp", "xt_multiport",
                 "xt_comment", "xt_u32", "xt_length", "xt_statistic", "sch_netem", "bridge")
# 5.10's UML has no credited entropy source: getrandom() would block Python's start-up forever. The host hands the
# guest a seed from its own CSPRNG, credited with RNDADDENTROPY before anything else starts.
SEED_BYTES = 64
RNDADDENTROPY = 0x40085203
CREDIT_SEED = ("import fcntl, os, struct, sys; d = open(sys.argv[1], 'rb').read(); "
               f"fcntl.ioctl(os.open('/dev/random', os.O_WRONLY), {RNDADDENTROPY}, "
               "struct.pack('ii', 8 * len(d), len(d)) + d)")
UNIX_SOCKET_PATH_MAX = 100      # sun_path is 108 bytes with its NUL; UML's mconsole socket lives in uml_dir
CONTROL = "guest"               # the folder (inside the run folder) with the guest's init, marks and console


@dataclass(frozen=True)
class Kernel:
    """One user-mode Linux kernel: a version label (or the path the user gave) and its files."""

    label: str
    binary: Path
    modules: Path | None        # the folder holding <release>/modules.dep
    package: str = ""           # "user-mode-linux 6.1um4+b13 (bookworm)" for kernels setup.sh installed

    @property
    def release(self) -> str | None:
        """The guest's `uname -r` as its module folder names it (None without modules)."""
        if self.modules is None:
            return None
        names = sorted(p.name for p in self.modules.iterdir() if (p / "modules.dep").exists())
        return names[0] if names else None

    @property
    def config_hz(self) -> int | None:
        """CONFIG_HZ from the package's config (the guest reports its own; this is for `twlab kernels`)."""
        usr = self.modules.parents[2] if self.modules is not None else self.binary.resolve().parent.parent
        cfg = usr / "share/doc/user-mode-linux/config.gz"
        with contextlib.suppress(OSError, EOFError):
            m = re.search(rb"^CONFIG_HZ=(\d+)$", gzip.decompress(cfg.read_bytes()), re.M)
            return int(m.group(1)) if m else None
        return None


def kernels_dir() -> Path:
    return Path(os.environ.get(KERNELS_ENV) or DEFAULT_KERNELS_DIR)


def install_command(version: str) -> str:
    return f"bash setup.sh kernels {version}"


def _installed_kernel(version: str) -> Kernel | None:
    folder = kernels_dir() / version
    binary = folder / "linux"
    if not (binary.exists() and os.access(binary, os.X_OK)):
        return None
    package = (folder / "package").read_text().strip() if (folder / "package").exists() else ""
    modules = folder / "usr/lib/uml/modules"
    return Kernel(version, binary, modules if modules.is_dir() else None, package)


def installed() -> list[Kernel]:
    """The kernels `bash setup.sh kernels` installed, in version order."""
    return [k for v in SUITES if (k := _installed_kernel(v)) is not None]


def _kernel_from_path(path: Path) -> Kernel:
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"kernel {str(path)!r}: not an executable file", "give a linux.uml binary or a version "
                         f"({', '.join(SUITES)})")
    # Debian's layout: /usr/bin/linux.uml beside /usr/lib/uml/modules
    modules = path.resolve().parent.parent / "lib/uml/modules"
    return Kernel(str(path), path.resolve(), modules if modules.is_dir() else None)


def resolve(spec: str) -> Kernel:
    """A `--kernel` value: a known version (installed, else an EnvironmentProblem naming the set-up command) or
    a path to a linux.uml binary."""
    if spec in SUITES:
        kernel = _installed_kernel(spec)
        if kernel is None:
            raise EnvironmentProblem(f"user-mode Linux kernel {spec} is not installed in {kernels_dir()}",
                                     f"install it: sudo {install_command(spec)}")
        return kernel
    if "/" in spec or Path(spec).exists():
        return _kernel_from_path(Path(spec))
    raise UsageError(f"unknown kernel {spec!r}", f"use one of {', '.join(SUITES)} or a path to a linux.uml binary")


def listing() -> list[dict[str, Any]]:
    """One row per known version (installed or not) plus nothing else: what `twlab kernels` shows."""
    rows = []
    for version, suite in SUITES.items():
        k = _installed_kernel(version)
        rows.append({"version": version, "suite": suite, "installed": k is not None,
                     "binary": str(k.binary) if k else None, "release": k.release if k else None,
                     "package": k.package if k else None, "hz": k.config_hz if k else None,
                     "install": None if k else f"sudo {install_command(version)}"})
    return rows


# ---------------------------------------------------------------------------------------------
# the guest's init: generated per boot, kept in the run folder


def _sh(value: str | Path) -> str:
    return shlex.quote(str(value))


GUEST_TMPFS = ("/tmp", "/run", "/var/tmp")   # the guest's own scratch space over the host's read-only root


def _host_paths_back(workdir: Path) -> str:
    """Mount lines that bring back, read-only, the host folders the guest needs but its tmpfs hides: the project
    and its Python environment when they live under /tmp or /run (a CI clone in /tmp, say)."""
    root = Path(__file__).resolve().parents[2]    # the folder holding lab/
    needed = sorted({root, Path(sys.prefix).resolve(), workdir.resolve()})
    hidden = [p for p in needed if any(p == Path(d) or Path(d) in p.parents for d in GUEST_TMPFS)]
    outer = [p for p in hidden if not any(q in p.parents for q in hidden)]
    return "".join(f"mkdir -p {_sh(p)}\nmount -r -t hostfs none {_sh(p)} -o {_sh(p)}\n" for p in outer)


def init_script(kernel: Kernel, share: Path, lab_argv: list[str], workdir: Path, env: dict[str, str],
                net: GuestNet | None = None) -> str:
    """The guest's PID 1: mounts, modules, iptables flavour, a record of the guest, the lab run, power-off."""
    ctl = share / CONTROL
    eth0 = f"ip addr add {_sh(net.addr)} dev eth0\nip link set eth0 up\n" if net is not None else ""
    exports = "".join(f"export {k}={_sh(v)}\n" for k, v in sorted(env.items()))
    modules = ""
    if kernel.modules is not None:
        modules = f"""mkdir -p /run/twlab/mods/lib/modules
mount -t hostfs none /run/twlab/mods/lib/modules -o {_sh(kernel.modules)}
printf '#!/bin/sh\\nexec /usr/sbin/modprobe -d /run/twlab/mods "$@"\\n' > /run/twlab/modprobe
chmod +x /run/twlab/modprobe
echo /run/twlab/modprobe > /proc/sys/kernel/modprobe
for m in {' '.join(GUEST_MODULES)}; do /run/twlab/modprobe -q "$m" 2>/dev/null; done
"""
    return f"""#!/bin/sh
# twlab guest init (generated by lab/run/guests.py): the host's root read-only, this run folder writable
PATH=/run/twlab/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
{exports}mount -t proc proc /proc
mount -t sysfs sys /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev   # the kernel mounts it itself (DEVTMPFS_MOUNT)
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
for d in {' '.join(GUEST_TMPFS)}; do mount -t tmpfs tmpfs "$d"; done
{_host_paths_back(workdir)}mkdir -p {_sh(share)} /run/twlab/bin
mount -t hostfs none {_sh(share)} -o {_sh(share)} || {{ echo "twlab guest: cannot mount the run folder"; \
echo o > /proc/sysrq-trigger; }}
{modules}[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
PYTHONHASHSEED=0 {_sh(sys.executable)} -c {_sh(CREDIT_SEED)} {_sh(ctl / "seed")}
rm -f {_sh(ctl / "seed")}
ip link set lo up
{eth0}# the guest's own firewall (its kernel, not the host's): a rule put into and taken out of a base chain of the
# filter table tells which iptables flavour this kernel supports (5.10's nftables has the table, no base chains)
iptables_kind=none
probe="INPUT -p tcp --tcp-flags ALL ACK -m comment --comment twlprobe -j ACCEPT"
for kind in nft legacy; do
  if iptables-$kind -w -t filter -I $probe 2>/dev/null && iptables-$kind -w -t filter -D $probe; then
    iptables_kind=$kind
    break
  fi
done
if [ "$iptables_kind" = legacy ]; then
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf "/usr/sbin/${{t%%-*}}-legacy${{t#${{t%%-*}}}}" "/run/twlab/bin/$t"
  done
fi
hz=$(zcat /proc/config.gz 2>/dev/null | sed -n 's/^CONFIG_HZ=//p')
printf '{{"uname": "%s", "cpus": %s, "hz": %s, "iptables": "%s"}}\\n' "$(uname -r)" "$(nproc)" "${{hz:-null}}" \
"$iptables_kind" > {_sh(ctl / "guest.json")}
cd {_sh(workdir)}
{' '.join(_sh(a) for a in lab_argv)} > {_sh(ctl / "stdout.jsonl")} 2> {_sh(ctl / "stderr.txt")}
echo $? > {_sh(ctl / "rc.tmp")} && mv {_sh(ctl / "rc.tmp")} {_sh(ctl / "rc")}
sync
echo o > /proc/sysrq-trigger
poweroff -f
"""


# ---------------------------------------------------------------------------------------------
# one guest run


@dataclass
class GuestRun:
    """What one guest did: its record (uname, cpus, hz), the results its lab run printed, its exit code."""

    kernel: Kernel
    out_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int = 3
    error: str | None = None
    boot_s: float | None = None
    wall_s: float = 0.0
    run_id: str = ""            # names the ledger (twl<run_id>.json) and UML's umid


def _group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (read from /proc: exact pids, nothing matched by name)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _sweep(pgid: int, ledger: Ledger) -> None:
    """SIGKILL every process of the guest's group (UML's helpers outlive the main process), then forget them."""
    for pid in _group_pids(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for item in list(ledger.items):
        if item["kind"] == "pid":
            ledger.discard("pid", item["name"])


def _record_group(pgid: int, ledger: Ledger) -> None:
    """Put the guest's processes in the ledger by pid (and start time), for teardown and `doctor --cleanup`."""
    known = {i["name"] for i in ledger.items if i["kind"] == "pid"}
    for pid in _group_pids(pgid):
        if str(pid) not in known:
            ledger.add("pid", str(pid), what="uml guest")


def run_deadline_s(exps: list[Experiment]) -> float:
    return scaled(RUN_MARGIN_S + GUEST_SLOWDOWN * sum(e.duration_hint_s for e in exps))


def _lab_argv(names: list[str], out_dir: Path, jobs: int) -> list[str]:
    return [sys.executable, "-m", "lab", "run", *names, "--json", "--out", str(out_dir), "--jobs", str(jobs)]


def _guest_env() -> dict[str, str]:
    """What the guest's lab run inherits from ours: an explicit timeout scale, the pure-Python switch."""
    return {k: v for k, v in os.environ.items() if k in ("TWLAB_TIMEOUT_SCALE", "TWLAB_PURE")}


def _kernel_argv(kernel: Kernel, init: Path, umid: str, uml_dir: Path) -> list[str]:
    return [str(kernel.binary), f"mem={GUEST_MEMORY}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={init}", "con=null", "con0=null,fd:1", f"umid={umid}", f"uml_dir={uml_dir}"]


def _check_share(path: Path) -> None:
    if any(c in str(path) for c in ",\n \t"):
        raise UsageError(f"run folder {str(path)!r}: a guest cannot mount a path with commas or spaces",
                         "pass --out with a plain path")



@contextmanager
def _uml_dir(run_id: str, ctl: Path) -> Iterator[Path]:
    """UML's own folder (mconsole socket, pid file): in the run folder, so that even a killed run leaves nothing
    elsewhere; in the temp directory when that path is too long for the socket (108 bytes)."""
    if len(str(ctl / "uml" / f"twl{run_id}" / "mconsole")) < UNIX_SOCKET_PATH_MAX:
        d = ctl / "uml"
        d.mkdir(exist_ok=True)
    else:
        d = Path(tempfile.mkdtemp(prefix=f"twl{run_id}-uml-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def boot(kernel: Kernel, exps: list[Experiment], out_dir: Path, jobs: int = GUEST_JOBS,
         on_event: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> GuestRun:
    """Boot `kernel`, run `exps` in it into out_dir (host path, mounted at the same path), power it off.

    Never hangs: boot deadline (BOOT_DEADLINE_S scaled), run deadline (run_deadline_s), SIGTERM/Ctrl-C (or `stop`,
    when guests boot in threads) unwind through the sweep; every guest process is in the ledger by pid until it is
    gone."""
    out_dir = out_dir.resolve()
    return boot_program(kernel, _lab_argv([e.id for e in exps], out_dir, jobs), out_dir, run_deadline_s(exps),
                        on_event=on_event, stop=stop)


@dataclass(frozen=True)
class GuestNet:
    """The guest's eth0: a TAP device in a lab namespace of the host (the UML process runs in that namespace)."""

    netns: str
    tap: str
    addr: str                   # the guest's address with its prefix, e.g. 203.0.113.1/24


def boot_program(kernel: Kernel, argv: list[str], out_dir: Path, deadline_s: float, net: GuestNet | None = None,
                 on_event: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> GuestRun:
    """Boot `kernel`, run `argv` as the guest's program (stdout/stderr/exit code in out_dir/guest/), power off."""
    say = on_event or (lambda text: None)
    out_dir = out_dir.resolve()
    _check_share(out_dir)
    ctl = out_dir / CONTROL
    ctl.mkdir(parents=True, exist_ok=True)
    for stale in ("guest.json", "stdout.jsonl", "stderr.txt", "rc"):
        with contextlib.suppress(FileNotFoundError):
            (ctl / stale).unlink()
    run_id = new_run_id()
    run = GuestRun(kernel, out_dir, run_id=run_id)
    init = ctl / "init.sh"
    init.write_text(init_script(kernel, out_dir, argv, Path(__file__).resolve().parent.parent.parent, _guest_env(),
                                net))
    init.chmod(0o755)
    seed = ctl / "seed"
    seed.touch(mode=0o600)
    seed.write_bytes(os.urandom(SEED_BYTES))
    ledger = Ledger(run_id)
    t0 = time.monotonic()
    try:
        with _uml_dir(run_id, ctl) as uml_dir, (ctl / "console.log").open("wb") as console:
            kernel_argv = _kernel_argv(kernel, init, f"twl{run_id}", uml_dir)
            if net is not None:  # `ip netns exec` execs the kernel: the pid stays the one recorded
                kernel_argv = ["ip", "netns", "exec", net.netns, *kernel_argv, f"eth0=tuntap,{net.tap}"]
            proc = subprocess.Popen(kernel_argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=die_with_parent(signal.SIGKILL))
            pgid = proc.pid
            ledger.add("pid", str(proc.pid), what="uml guest", kernel=kernel.label)
            try:
                _wait_guest(run, proc, pgid, ledger, t0, deadline_s, say, stop or threading.Event())
            finally:
                if proc.poll() is None:
                    say(f"kernel {kernel.label}: stopping the guest (pid {proc.pid})")
                _sweep(pgid, ledger)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
    finally:
        ledger.close()
        seed.unlink(missing_ok=True)
        run.wall_s = round(time.monotonic() - t0, 3)
    _collect(run)
    return run


def _wait_guest(run: GuestRun, proc: subprocess.Popen[bytes], pgid: int, ledger: Ledger, t0: float,
                deadline_s: float, say: Callable[[str], None], stop: threading.Event) -> None:
    ctl = run.out_dir / CONTROL
    boot_deadline = scaled(BOOT_DEADLINE_S)
    label = run.kernel.label
    say(f"kernel {label}: booting {run.kernel.binary}")
    while proc.poll() is None:
        elapsed = time.monotonic() - t0
        if run.boot_s is None and (ctl / "guest.json").exists():
            run.boot_s = round(elapsed, 3)
            _record_group(pgid, ledger)
            say(f"kernel {label}: guest up in {run.boot_s:.1f} s, running the experiments")
        if run.boot_s is None and elapsed > boot_deadline:
            run.error = f"kernel {label}: the guest did not boot within {boot_deadline:.0f} s"
            return
        if stop.is_set():
            run.error = f"kernel {label}: interrupted"
            return
        if elapsed > deadline_s:
            run.error = f"kernel {label}: the guest's run passed its deadline of {deadline_s:.0f} s"
            return
        if (ctl / "rc").exists():
            proc_deadline = time.monotonic() + scaled(10.0)     # power-off after the last mark
            while proc.poll() is None and time.monotonic() < proc_deadline:
                time.sleep(POLL_S)
            return
        time.sleep(POLL_S)
    if not (ctl / "rc").exists():
        tail = _tail(ctl / "console.log")
        run.error = f"kernel {label}: the guest stopped (exit {proc.returncode}) before its run ended" + (
            f"; console: {tail}" if tail else "")


def _tail(path: Path, lines: int = 1) -> str:
    with contextlib.suppress(OSError):
        text = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(text[-lines:])[:300]
    return ""


def _collect(run: GuestRun) -> None:
    """Read the guest's record and results; each result gets the guest's facts, also in its result.json."""
    ctl = run.out_dir / CONTROL
    with contextlib.suppress(OSError, ValueError):
        run.info = json.loads((ctl / "guest.json").read_text())
    with contextlib.suppress(OSError, ValueError):
        run.exit_code = int((ctl / "rc").read_text().strip())
    if run.error is None and not (ctl / "rc").exists():
        run.error = f"kernel {run.kernel.label}: the guest left no exit code"
    if run.error is not None:
        run.exit_code = 3
    with contextlib.suppress(OSError):
        for line in (ctl / "stdout.jsonl").read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    run.results.append(json.loads(line))
    if run.error is None and not run.results:   # with results, each one says why it could not run
        err = _tail(ctl / "stderr.txt", lines=2)
        run.error = f"kernel {run.kernel.label}: " + (err or f"the guest's run exited {run.exit_code}")
        run.exit_code = 3
    for res in run.results:
        res.update(guest_fields(run))
        why = missing_prerequisite(res, run.info)
        if why is not None:
            res.update(status="could-not-run", reproduced=False, exit_code=3, could_not_run=why,
                       error=f"could not run: {why}")
        _rewrite_result(res)


def missing_prerequisite(res: dict[str, Any], info: dict[str, Any]) -> str | None:
    """Why an experiment could not run on this guest's kernel, when it lacks a part the experiment needs
    (an environment verdict, never "not reproduced"); None when nothing it needs was missing."""
    if info.get("iptables") == "none" and not res.get("reproduced"):
        said = " ".join([res.get("error") or "", *map(str, res.get("skipped") or [])])
        if "iptables" in said:
            return f"kernel {info.get('uname')} has no iptables filter table (neither nftables nor legacy)"
    return None


def guest_fields(run: GuestRun) -> dict[str, Any]:
    """What a result run in a guest carries beyond the host contract: HZ, CPUs and where the kernel came from."""
    return {"kernel_hz": run.info.get("hz"), "guest_cpus": run.info.get("cpus"),
            "guest": {"kernel": run.kernel.label, "binary": str(run.kernel.binary), "package": run.kernel.package,
                      "iptables": run.info.get("iptables"), "boot_s": run.boot_s, "wall_s": run.wall_s}}


def _rewrite_result(res: dict[str, Any]) -> None:
    folder = res.get("folder")
    if not folder:
        return
    path = Path(folder) / "result.json"
    if path.exists():
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(path)


def missing_results(run: GuestRun, exps: list[Experiment]) -> list[dict[str, Any]]:
    """A result for each experiment the guest did not report (it did not boot, or passed its deadline)."""
    have = {r.get("experiment") for r in run.results}
    why = run.error or f"kernel {run.kernel.label}: no result"
    from lab.run.result import EXIT_ENVIRONMENT, RunResult

    return [RunResult.not_run(e, run.out_dir / e.id, why, EXIT_ENVIRONMENT,
                              kernel=run.info.get("uname") or run.kernel.release,
                              extra={"could_not_run": why, **guest_fields(run)}).to_dict()
            for e in exps if e.id not in have]


def folder_name(kernel: Kernel) -> str:
    """The kernel's folder inside a run folder: kernel-6.1, or kernel-<release> (else <binary name>) for a path."""
    label = kernel.label if kernel.label in SUITES else re.sub(r"[^A-Za-z0-9._-]+", "_",
                                                               kernel.release or kernel.binary.name)
    return f"kernel-{label}"


def kernel_seen(run: GuestRun) -> str:
    """The guest's uname -r (or what we expected, if it never said)."""
    return str(run.info.get("uname") or run.kernel.release or run.kernel.label)

