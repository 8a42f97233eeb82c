#!/usr/bin/env bash
# Is the ring's work for a deep pipeline and for a huge command arriving in pieces linear? Builds
# ringport at REV and at the working tree (release), and for each prints the server's CPU time
# (utime + stime from /proc/PID/stat, in clock ticks turned into ms) as "process/rings": the
# whole process, then its ring threads alone, spent on:
#   - N = 50,000, 100,000, 200,000 pipelined `GET k` sent in one write (linear: the ms double
#     with N; quadratic: they quadruple);
#   - one `MGET` of 1,000,000 keys (the parser's argument limit) sent in 16 KiB pieces.
# Usage: bench/pipeline-cost.sh REV   (e.g. the commit before the change)
# The figures are CPU time of the whole server process, so they are noisy on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/pipeline-cost.sh REV}
. bench/two-builds.sh "$rev"
cat >"$work/client.py" <<'PY'
import socket, sys, time
port, kind, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def cmd(*args):
    # One join: growing a bytes object argument by argument is quadratic in Python.
    return b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in args])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(cmd(b"AUTH", b"bench", b"secret"))
assert s.recv(100).startswith(b"+OK")
if kind == "pipeline":
    s.sendall(cmd(b"SET", b"k", b"v"))
    assert s.recv(100).startswith(b"+OK")
    payload = cmd(b"GET", b"k") * n
    expect = b"$1\r\nv\r\n" * n
else:
    payload = cmd(b"MGET", *[b"m%d" % i for i in range(n)])
    expect = b"*%d\r\n" % n + b"$-1\r\n" * n
import glob, os
def stat_ticks(path):
    f = open(path).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
def ticks(pid):
    # (whole process, ring threads only): the rings' share is what must stay linear; the
    # rest is the store workers that each GET visits.
    rings = sum(stat_ticks(t + "/stat") for t in glob.glob("/proc/%d/task/*" % pid)
                if open(t + "/comm").read().startswith("ring-"))
    return stat_ticks("/proc/%d/stat" % pid), rings
pid = int(sys.argv[4])
before = ticks(pid)
if kind == "pipeline":
    s.sendall(payload)
else:
    for i in range(0, len(payload), 16384):
        s.sendall(payload[i:i + 16384])
got = 0
while got < len(expect):
    chunk = s.recv(1 << 20)
    assert chunk, "server closed"
    got += len(chunk)
after = ticks(pid)
ms = [(a - b) * 1000 // os.sysconf("SC_CLK_TCK") for a, b in zip(after, before)]
print("%d/%d ms" % (ms[0], ms[1]))
PY
for build in before after; do
  echo secret | "$work/$build" user add bench --data "$work/data-$build" >/dev/null
done
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F); before = $rev ($(git rev-parse --short "$rev")), after = working tree"
printf '%-28s %14s %14s\n' "load (ms: process/rings)" "before" "after"
for load in "pipeline 50000" "pipeline 100000" "pipeline 200000" "mget-pieces 1000000"; do
  printf '%-28s' "$load"
  for build in before after; do
    "$work/$build" serve --listen 127.0.0.1:16399 --data "$work/data-$build" --log-level warn >"$work/out" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
    # shellcheck disable=SC2086
    printf ' %14s' "$(python3 "$work/client.py" 16399 $load "$pid")"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
  echo
done
