#!/usr/bin/env bash
# Receive buffers consumed incrementally (IOU_PBUF_RING_INC, 6.12+; the default there: 64 x 64 KiB
# per ring) against a whole buffer per receive (--uring-disable incremental-buffers: 1024 x 16 KiB
# per ring), same binary, alternating rounds. For each: the server's RSS once started and after
# the loads, then per load the server CPU and io_uring_enter per request
# (../shared/tools/server-cost) and how often a ring ran out of buffers (INFO rings'
# bufring_exhausted, summed; each time, the receives wait for buffers to come back). Loads,
# redis-benchmark: PING at -c 50, -c 1000 and -c 5000, and PING with a 16 KiB argument at -c 50
# (a tenth of the requests).
# Usage: bench/recv-buffers.sh [ROUNDS] [REQUESTS]     (defaults 2 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
requests=${2:-200000}
cost=../shared/tools/server-cost
[ -x "$cost" ] || { echo "needs $cost" >&2; exit 2; }
cargo build --release -q -p ringport
port=16450
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. bench/one-server.sh
exhausted() { cli INFO rings | grep -o 'bufring_exhausted=[0-9]*' | awk -F= '{s += $2} END {print s + 0}'; }
# Each start on an empty store: memory the previous run's data left would count.
start_fresh() { # extra flags...
  rm -rf "$work/data"
  echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
  start_server "$@"
}
load() { # label, requests, redis-benchmark arguments...
  local label=$1 n=$2 before
  shift 2
  before=$(exhausted)
  printf '  %-22s ' "$label"
  "$cost" "$pid" "$n" -- redis-benchmark -h 127.0.0.1 -p $port --user bench -a secret \
    -n "$n" -q "$@" 2>/dev/null | tr '\r' '\n' | grep -v '^ *$' | tail -n 3 | tr '\n' ' ' | sed 's/  */ /g'
  echo " bufring_exhausted $(($(exhausted) - before))"
}
payload=$(head -c 16384 /dev/zero | tr '\0' x)

echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); ringport $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src ring || echo ' + working tree')"
for r in $(seq "$rounds"); do
  for mode in incremental whole; do
    if [ $mode = incremental ]; then start_fresh; else start_fresh --uring-disable incremental-buffers; fi
    echo "round $r, $mode: $(cli INFO server | grep incremental_buffers), recv buffers $(cli INFO memory | grep recv_buffer_bytes_per_ring), RSS $(rss_kb "$pid") kB at start"
    load "PING -c 50" "$requests" -t ping_inline -c 50
    load "PING -c 1000" "$requests" -t ping_inline -c 1000
    load "PING -c 5000" "$requests" -t ping_inline -c 5000
    echo "  RSS $(rss_kb "$pid") kB after the PINGs"
    load "PING 16 KiB -c 50" $((requests / 10)) -c 50 PING "$payload"
    echo "  RSS $(rss_kb "$pid") kB after the 16 KiB PINGs"
    stop_server
  done
done
