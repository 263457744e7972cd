"""A ledger of what each run created (namespaces, links, processes, files), so that
teardown and `twlab doctor --cleanup` remove exactly those, by exact name or pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lab.pcap.writer import SPOOL_PREFIX, TMP_SUFFIX


def ledger_dir() -> Path:
    base = Path("/run") if os.geteuid() == 0 and Path("/run").is_dir() else Path(tempfile.gettempdir())
    d = base / f"twlab-{os.geteuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def proc_start_ticks(pid: int) -> int | None:
    """Start time of a pid (clock ticks since boot); guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    now = proc_start_ticks(pid)
    return now is not None and (start_ticks is None or now == start_ticks)


class Ledger:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.path = ledger_dir() / f"twl{run_id}.json"
        self.items: list[dict[str, Any]] = []
        self.owner = os.getpid()
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(f"{self.path.stem}.{self.owner}.tmp")  # a dead writer's temp: doctor --cleanup
        try:
            tmp.write_text(json.dumps({"run_id": self.run_id, "owner": self.owner,
                                       "owner_start": proc_start_ticks(self.owner), "items": self.items}))
            tmp.replace(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def add(self, kind: str, name: str, **extra: Any) -> None:
        if kind == "pid":
            extra.setdefault("start", proc_start_ticks(int(name)))
        self.items.append({"kind": kind, "name": name, **extra})
        self._save()

    def discard(self, kind: str, name: str) -> None:
        self.items = [i for i in self.items if not (i["kind"] == kind and i["name"] == name)]
        self._save()

    def close(self) -> None:
        """Remove whatever is still recorded, newest first, then the ledger itself."""
        for item in reversed(list(self.items)):
            remove_item(item)
        self.items = []
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


TRACEFS_INSTANCE = "tracefs-instance"   # a private tracing instance (lab.kernel.tracepoints), by name


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, ask for `sig` when the parent dies (even by SIGKILL; prctl
    PR_SET_PDEATHSIG survives exec), so no child the lab started runs on as an orphan. libc is loaded here, in
    the parent: after fork the child only calls it."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(128 + int(sig))

    return preexec


def private_tracefs_command(mountpoint: str, then: str) -> list[str]:
    """A shell in a private mount namespace that mounts tracefs on `mountpoint`, then runs `then` there; the host's
    mount table never sees the mount (docs/kernel-facts.md §16)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'mount -t tracefs nodev "$1" && {then}', "sh", mountpoint]


def _tracefs_instance(name: str, action: str) -> bool:
    """Test for (`test -d`) or remove (`rmdir`) a tracing instance left by a dead run; True if that succeeded."""
    where = tempfile.mkdtemp(prefix=f"{name}-tracefs-")
    try:
        return subprocess.run(private_tracefs_command(where, f'{action} "$1/instances/{name}"'),
                              capture_output=True).returncode == 0
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(where)


def _exists(item: dict[str, Any]) -> bool:
    kind, name = item["kind"], item["name"]
    if kind == "netns":
        return Path("/run/netns", name).exists()
    if kind == "link":
        return Path("/sys/class/net", name).exists()
    if kind == "pid":
        return pid_alive(int(name), item.get("start"))
    if kind == "file":
        return Path(name).exists()
    if kind == TRACEFS_INSTANCE:
        return _tracefs_instance(name, "test -d")
    return False


def remove_item(item: dict[str, Any]) -> None:
    kind, name = item["kind"], item["name"]
    if not _exists(item):
        return
    if kind == "pid":
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(name), signal.SIGKILL)
    elif kind == "netns":
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    elif kind == "link":
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    elif kind == "file":
        with contextlib.suppress(FileNotFoundError):
            Path(name).unlink()
    elif kind == TRACEFS_INSTANCE:
        _tracefs_instance(name, "rmdir")   # no reader is left: the instance goes with its events and buffer


def _ledger_files() -> list[Path]:
    """Run ledgers: twl + run id + .json (not the output records, twl-out-<pid>.json)."""
    return sorted(p for p in ledger_dir().glob("twl*.json") if not p.name.startswith(OUTPUT_RECORD_PREFIX))


def _stale(records: Iterable[Path], pid_key: str, start_key: str) -> list[tuple[Path, dict[str, Any]]]:
    """The JSON records (path, data) whose process (its pid and start ticks under these keys) is gone;
    a record that cannot be read is skipped."""
    out = []
    for p in records:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(int(data.get(pid_key, 0)), data.get(start_key)):
            out.append((p, data))
    return out


def _stale_ledgers() -> list[tuple[Path, dict[str, Any]]]:
    return _stale(_ledger_files(), "owner", "owner_start")


def leftovers() -> list[str]:
    """Resources recorded by runs whose owner process is gone, and twl* namespaces no ledger knows."""
    found: list[str] = []
    live_names: set[str] = set()
    for p in _ledger_files():
        with contextlib.suppress(OSError, ValueError):
            live_names.update(i["name"] for i in json.loads(p.read_text()).get("items", []))
    for _, data in _stale_ledgers():
        found += [f"{i['kind']} {i['name']}" for i in data.get("items", []) if _exists(i)]
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        found += [f"netns {n.name} (no ledger)" for n in sorted(netns_dir.iterdir())
                  if n.name.startswith("twl") and n.name not in live_names]
    found += [f"file {p}" for p in stale_temp_files()]
    return found


# --- temporary files of processes that died (kill -9) -------------------------------------------------------

OUTPUT_RECORD_PREFIX = "twl-out-"    # + pid + ".json" in ledger_dir(): an output being written atomically


def _pid_of(text: str) -> int | None:
    head = text.split("-", 1)[0].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def spool_dir() -> Path:
    return Path(tempfile.gettempdir())


def stale_temp_files() -> list[Path]:
    """Temp files whose writer is gone: ledger temps (twl*.<pid>.tmp), analyze's spool files
    (twl-spool-<pid>-*), and the hidden temp of an atomic output write recorded in a twl-out-<pid>.json."""
    found: list[Path] = []
    for p in ledger_dir().glob("twl*.tmp"):
        parts = p.name.split(".")
        if len(parts) == 3 and parts[1].isdigit() and not pid_alive(int(parts[1]), None):
            found.append(p)
    with contextlib.suppress(OSError):
        for p in spool_dir().glob(f"{SPOOL_PREFIX}*"):
            pid = _pid_of(p.name[len(SPOOL_PREFIX):])
            if pid is not None and not pid_alive(pid, None):
                found.append(p)
    for rec, data in _stale_output_records():
        target = Path(str(data.get("path", "")))
        if target.name:
            found += sorted(target.parent.glob(f".{glob_escape(target.name)}.{data.get('pid')}.*{TMP_SUFFIX}"))
        found.append(rec)
    return found


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _stale_output_records() -> list[tuple[Path, dict[str, Any]]]:
    return _stale(ledger_dir().glob(f"{OUTPUT_RECORD_PREFIX}*.json"), "pid", "start")


@contextlib.contextmanager
def output_record(path: Path) -> Iterator[None]:
    """While an output file is written atomically (its hidden temp beside it), a record in the ledger folder lets
    `twlab doctor --cleanup` find that temp if this process is killed (-9) before it removes it itself."""
    pid = os.getpid()
    rec = ledger_dir() / f"{OUTPUT_RECORD_PREFIX}{pid}.json"
    try:
        rec.write_text(json.dumps({"pid": pid, "start": proc_start_ticks(pid), "path": str(Path(path).absolute())}))
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            rec.unlink()


def cleanup() -> list[str]:
    """Remove what crashed runs left: ledger items by exact name/pid, unledgered twl* namespaces, and temp files
    of dead processes (by their pid)."""
    removed: list[str] = []
    for p in stale_temp_files():
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(f"file {p}")
    for path, data in _stale_ledgers():
        for item in reversed(data.get("items", [])):
            if _exists(item):
                remove_item(item)
                removed.append(f"{item['kind']} {item['name']}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for entry in leftovers():
        if entry.endswith("(no ledger)"):
            name = entry.split()[1]
            remove_item({"kind": "netns", "name": name})
            removed.append(f"netns {name}")
    return removed
