#!/bin/bash
# How nflog-kernel.pcap was made (root, this machine's kernel): loopback TCP over IPv4 and IPv6 inside a
# throwaway namespace, logged by `iptables -j NFLOG` and captured by `tcpdump -i nflog:5`. The namespace is
# removed on every exit path by its exact name. Usage: bash tests/data/encap/nflog-kernel.sh OUT.pcap
set -u
NS=twlj-nflog-$$
OUT=${1:?output file}
ERR=$(mktemp /tmp/twl-nflog-err.XXXXXX)
TD=""
cleanup() { [ -n "$TD" ] && kill "$TD" 2>/dev/null; [ -n "$TD" ] && wait "$TD" 2>/dev/null; ip netns del "$NS" 2>/dev/null
            rm -f "$ERR"; }
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" iptables -A OUTPUT -p tcp -j NFLOG --nflog-group 5
ip netns exec "$NS" ip6tables -A OUTPUT -p tcp -j NFLOG --nflog-group 5
ip netns exec "$NS" tcpdump -U -i nflog:5 -w "$OUT" 2>"$ERR" &
TD=$!
for _ in $(seq 100); do grep -q "listening on" "$ERR" && break; sleep 0.1; done
ip netns exec "$NS" "$(dirname "$0")/../../../.venv/bin/python" - <<'PY'
import socket
for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    srv = socket.socket(fam); srv.bind((addr, 8080)); srv.listen()
    c = socket.socket(fam); c.connect((addr, 8080)); s, _ = srv.accept()
    c.sendall(b"hello over nflog"); s.recv(100); s.sendall(b"x" * 3000); got = 0
    while got < 3000: got += len(c.recv(4000))
    c.close(); s.recv(10); s.close(); srv.close()
PY
sleep 1.5   # the kernel hands NFLOG messages over in batches, flushed after 1 s
kill -INT "$TD"; wait "$TD"; TD=""
cat "$ERR"
