#!/usr/bin/env bash
# Side-by-side PING figures for ringport and redis-server on this machine, in one run:
# redis-benchmark (ping_inline, ping_mbulk; -c 50; -P 1 and -P 16) with the server's CPU cost per
# request (../shared/tools/server-cost when present), then RSS idle and with N idle authenticated
# sessions held by a separate client process.
#
# Usage: bench/ping-compare.sh [REQUESTS] [IDLE_SESSIONS]     (defaults 500000, 10000)
# Extra ringport serve flags: RINGPORT_FLAGS="--kernel-profile 5.10" bench/ping-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500000}
idle=${2:-10000}
command -v redis-server >/dev/null || { echo "installing redis-server"; apt-get install -y -qq redis-server redis-tools >/dev/null; }
cost=../shared/tools/server-cost
[ -x "$cost" ] || cost=""
cargo build --release -q -p ringport
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
# shellcheck disable=SC2086
target/release/ringport serve --listen 127.0.0.1:16390 --data "$work/data" --log-level warn ${RINGPORT_FLAGS:-} >"$work/ringport.out" 2>&1 &
pids+=($!); ringport_pid=$!
redis-server --port 16391 --bind 127.0.0.1 --save '' --appendonly no --requirepass secret --maxclients 50000 --daemonize no >"$work/redis.out" 2>&1 &
pids+=($!); redis_pid=$!
for _ in $(seq 50); do
  grep -q "listening" "$work/ringport.out" 2>/dev/null && redis-cli -p 16391 -a secret --no-auth-warning ping >/dev/null 2>&1 && break
  sleep 0.2
done

rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$1/status"; }
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F)"
echo "RSS idle, before any load: ringport $(rss $ringport_pid), redis-server $(rss $redis_pid)"
echo
for pipeline in 1 16; do
  for target in ringport redis; do
    if [ $target = ringport ]; then port=16390; pid=$ringport_pid; auth=(--user bench -a secret); else port=16391; pid=$redis_pid; auth=(-a secret); fi
    for test in ping_inline ping_mbulk; do
      load=(redis-benchmark -h 127.0.0.1 -p $port "${auth[@]}" -t $test -c 50 -n "$n" -P $pipeline -q)
      printf '%-8s %-11s -P %-2s ' $target $test $pipeline
      if [ -n "$cost" ]; then
        "$cost" "$pid" "$n" -- "${load[@]}" 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g'
      else
        "${load[@]}" 2>/dev/null | tr '\r' '\n' | grep -v '^ *$' | tail -1
      fi
      echo
    done
  done
done

echo
echo "RSS after the load: ringport $(rss $ringport_pid), redis-server $(rss $redis_pid)"
cat >"$work/hold.py" <<'PY'
import resource, socket, sys, time
port, user, count, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
auth = (f"AUTH {user} secret\r\n" if user else "AUTH secret\r\n").encode()
socks = []
for i in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(auth)
    socks.append(s)
ok = 0
for s in socks:
    s.settimeout(30)
    if s.recv(16).startswith(b"+OK"):
        ok += 1
open(out, "w").write(f"{ok}\n")
time.sleep(600)
PY
for target in ringport redis; do
  if [ $target = ringport ]; then port=16390; pid=$ringport_pid; user=bench; else port=16391; pid=$redis_pid; user=""; fi
  python3 "$work/hold.py" $port "$user" "$idle" "$work/$target.ok" &
  holder=$!; pids+=($holder)
  for _ in $(seq 600); do [ -s "$work/$target.ok" ] && break; sleep 0.2; done
  sleep 1
  echo "RSS with $(cat "$work/$target.ok" 2>/dev/null || echo '?') idle authenticated sessions: $target $(rss $pid)"
  kill $holder; wait $holder 2>/dev/null || true
done
