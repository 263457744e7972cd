"""Where a packet really leaves: network namespaces by kernel identity, not by name.

A namespace is identified by its nsfs inode ((st_dev, st_ino) of /run/netns/NAME or /proc/*/ns/net). The
guards (lab.kernel.inject, lab.kernel.agent, lab.kernel.impair) ask the kernel which namespace a socket or a
TUN device belongs to and accept it only when that identity is one the run's ledger file recorded as created
by this process. A name, or an object that merely carries a lab namespace's name, proves nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import TYPE_CHECKING

from lab.errors import UnsafeTarget

if TYPE_CHECKING:
    import socket

NsId = tuple[int, int]  # (st_dev, st_ino) of an nsfs file

SIOCGSKNS = 0x894C        # socket ioctl: an fd for the socket's network namespace (linux/sockios.h)
TUNGETDEVNETNS = 0x54E3   # _IO('T', 227): an fd for a TUN device's network namespace (linux/if_tun.h)
NETNS_DIR = "/run/netns"


def _id_of_fd(fd: int) -> NsId:
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino


def of_path(path: str) -> NsId:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def of_socket(sock: socket.socket) -> NsId:
    """The namespace the socket was created in (where its packets are routed), whatever thread asks."""
    return _ask(sock.fileno(), SIOCGSKNS, "a socket")


def of_tun(fd: int) -> NsId:
    """The namespace the TUN device lives in (whose kernel receives what is written to it)."""
    return _ask(fd, TUNGETDEVNETNS, "an attached TUN device")


def _ask(fd: int, request: int, what: str) -> NsId:
    try:
        ns_fd = fcntl.ioctl(fd, request)
    except OSError as exc:
        raise UnsafeTarget(f"refusing to send: cannot tell which network namespace fd {fd} sends into "
                           f"({exc.strerror})", f"send through {what} the lab opened") from None
    return _id_of_fd(ns_fd)


def of_process(pid: int) -> NsId:
    return of_path(f"/proc/{pid}/ns/net")


def host() -> NsId:
    """The namespace of this process's main thread (threads enter lab namespaces only for a block)."""
    pid = os.getpid()
    return of_path(f"/proc/{pid}/task/{pid}/ns/net")


def run_namespaces(run_id: str) -> dict[NsId, str]:
    """The namespaces this process's run `run_id` created, read from its ledger file (not from an object the
    caller hands in): identity -> name. Only mounted namespaces named 'twl' + run_id count."""
    from lab.run.resources import ledger_dir

    prefix = f"twl{run_id}"
    if len(run_id) != 6:
        return {}
    try:
        data = json.loads((ledger_dir() / f"{prefix}.json").read_text())
    except (OSError, ValueError):
        return {}
    if data.get("owner") != os.getpid():
        return {}
    out: dict[NsId, str] = {}
    for item in data.get("items", []):
        name = str(item.get("name", ""))
        if item.get("kind") == "netns" and name.startswith(prefix) and "/" not in name and len(name) <= 15:
            try:
                out[of_path(f"{NETNS_DIR}/{name}")] = name
            except OSError:
                continue
    return out


def leaving_from(ns_id: NsId, run_id: str) -> str | None:
    """None when packets leave from the host's namespace, else the name of the run's namespace they leave
    from; UnsafeTarget when they would leave from any other namespace."""
    if ns_id == host():
        return None
    name = run_namespaces(run_id).get(ns_id)
    if name is None:
        raise UnsafeTarget(f"refusing to send from network namespace inode {ns_id[1]}: not one this run created",
                           "send from the host's loopback or from a namespace of this run (lab.kernel.hosts)")
    return name


def verified_name(name: str, run_id: str) -> str:
    """`name` if it is a namespace this run created (by identity of the mounted namespace), else UnsafeTarget."""
    if not isinstance(name, str) or "/" in name or not name.startswith(f"twl{run_id}"):
        raise UnsafeTarget(f"refusing to act in namespace {name!r}: not this run's own (twl{run_id}*)",
                           "use a namespace this run created (lab.kernel.hosts)")
    try:
        ident = of_path(f"{NETNS_DIR}/{name}")
    except OSError:
        raise UnsafeTarget(f"refusing to act in namespace {name!r}: it does not exist",
                           "use a namespace this run created (lab.kernel.hosts)") from None
    if run_namespaces(run_id).get(ident) != name:
        raise UnsafeTarget(f"refusing to act in namespace {name!r}: this run's ledger did not create it",
                           "use a namespace this run created (lab.kernel.hosts)")
    return name
