#!/usr/bin/env bash
# What each fast path buys: redis-benchmark PING (-c 50, -P 1 and -P 16) against ringport under
# every kernel profile and on the epoll backend, side by side in one run, with the server's CPU
# time, syscalls and io_uring_enter calls per request (../shared/tools/server-cost if present).
# Usage: bench/profile-compare.sh [REQUESTS]   (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500000}
cost=../shared/tools/server-cost
[ -x "$cost" ] || cost=""
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
cargo build --release -q -p ringport
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); $n requests, -c 50"
printf '%-22s %-3s %s\n' "profile" "-P" "redis-benchmark ping_mbulk | server cost"
for profile in "newest" "6.1" "5.15" "5.10" "epoll"; do
  if [ "$profile" = epoll ]; then flags=(--backend epoll); else flags=(--kernel-profile "$profile"); fi
  target/release/ringport serve --listen 127.0.0.1:16397 --data "$work/data" --log-level warn "${flags[@]}" >"$work/out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
  for pipeline in 1 16; do
    load=(redis-benchmark -h 127.0.0.1 -p 16397 --user bench -a secret -t ping_mbulk -c 50 -n "$n" -P "$pipeline" -q)
    printf '%-22s %-3s ' "$profile" "$pipeline"
    if [ -n "$cost" ]; then
      "$cost" "$pid" "$n" -- "${load[@]}" 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g'
    else
      "${load[@]}" 2>/dev/null | tr '\r' '\n' | grep -v '^ *$' | tail -1
    fi
    echo
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
