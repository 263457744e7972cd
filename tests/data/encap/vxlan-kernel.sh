#!/bin/bash
# How vxlan-kernel.pcap was made (root, this machine's kernel): two throwaway namespaces joined by a veth of
# MTU 1280 carry a VXLAN (UDP 4789) of MTU 1500, so the kernel fragments the outer IPv4 of full-sized segments
# (the outer DF is unset), as a GTP-U or VXLAN underlay with a small MTU does; inner TCP over IPv4 and IPv6, 3000
# bytes each way, captured on the veth. The namespaces are removed by their exact names on every exit path.
# Usage: bash tests/data/encap/vxlan-kernel.sh OUT.pcap
set -u
OUT=${1:?output pcap}
A=twlj-a-$$; B=twlj-b-$$
ERR=$(mktemp /tmp/twl-vx-err.XXXXXX)
TD=""
cleanup() { [ -n "$TD" ] && kill "$TD" 2>/dev/null; [ -n "$TD" ] && wait "$TD" 2>/dev/null
            ip netns del "$A" 2>/dev/null; ip netns del "$B" 2>/dev/null; rm -f "$ERR"; }
trap cleanup EXIT
set -e
ip netns add "$A"; ip netns add "$B"
ip -n "$A" link add twlj-va type veth peer name twlj-vb netns "$B"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set twlj-va mtu 1280 up; ip -n "$B" link set twlj-vb mtu 1280 up
ip -n "$A" addr add 198.51.100.1/24 dev twlj-va; ip -n "$B" addr add 198.51.100.2/24 dev twlj-vb
RA=198.51.100.2; RB=198.51.100.1
ip -n "$A" link add twlj-x type vxlan id 42 remote "$RA" dstport 4789
ip -n "$B" link add twlj-x type vxlan id 42 remote "$RB" dstport 4789
for ns in "$A" "$B"; do ip -n "$ns" link set twlj-x mtu 1500 gso_max_segs 1 up; done   # one segment per packet
ip -n "$A" addr add 203.0.113.1/24 dev twlj-x; ip -n "$B" addr add 203.0.113.2/24 dev twlj-x
ip -n "$A" addr add 2001:db8:1::1/64 dev twlj-x nodad; ip -n "$B" addr add 2001:db8:1::2/64 dev twlj-x nodad
set +e
ip netns exec "$A" tcpdump -U --immediate-mode -n -i twlj-va -w "$OUT" 2>"$ERR" &
TD=$!
for _ in $(seq 100); do grep -q "listening on" "$ERR" && break; sleep 0.1; done
PY=$(cd "$(dirname "$0")/../../.." && pwd)/.venv/bin/python
for addr in 203.0.113.2 2001:db8:1::2; do
  ip netns exec "$B" $PY -c "
import socket,sys
fam = socket.AF_INET6 if ':' in '$addr' else socket.AF_INET
srv = socket.socket(fam); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind(('$addr', 8080)); srv.listen()
print('ready', flush=True)
s, _ = srv.accept(); got = 0
while got < 3000: got += len(s.recv(65536))
s.sendall(b'y' * 3000); s.recv(10); s.close()
" > "$ERR.srv" &
  SP=$!
  for _ in $(seq 100); do grep -q ready "$ERR.srv" && break; sleep 0.1; done
  ip netns exec "$A" $PY -c "
import socket
fam = socket.AF_INET6 if ':' in '$addr' else socket.AF_INET
c = socket.create_connection(('$addr', 8080), timeout=10); c.sendall(b'x' * 3000); got = 0
while got < 3000: got += len(c.recv(65536))
c.close()
"
  wait $SP; rm -f "$ERR.srv"
done
sleep 0.3
kill -INT "$TD"; wait "$TD"; TD=""
cat "$ERR"
