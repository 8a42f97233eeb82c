#!/usr/bin/env bash
# What the expiry sweep costs the other commands: GET latency (ringport-bench, open loop, fixed
# rate) on live keys, once with nothing to sweep and once right after EXPIRED keys (default
# 100,000) expired, while the sweep removes them in batches of 500. Alternating rounds, same
# server, one run; INFO store's store_expired_swept says how many the sweep removed during
# each measured window. On the embedded store, or on a throwaway PostgreSQL with `postgres`.
# Usage: bench/sweep-impact.sh [embedded|postgres] [EXPIRED] [RATE] [ROUNDS]
#        (defaults embedded 100000 2000 2)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-embedded}
expired=${2:-100000}
rate=${3:-2000}
rounds=${4:-2}
cargo build --release -q -p ringport -p ringport-bench
bench=target/release/ringport-bench
port=16511
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; [ "$store" = postgres ] && pg_stop; rm -rf "$work"; }
trap cleanup EXIT
flags=(--data "$work/data")
if [ "$store" = postgres ]; then
  . bench/throwaway-pg.sh 16512
  flags=(--store "$url")
fi
echo secret | target/release/ringport user add bench "${flags[@]}" >/dev/null
target/release/ringport serve --listen 127.0.0.1:$port "${flags[@]}" --log-level warn >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
cli() { redis-cli -p $port --user bench --pass secret --no-auth-warning "$@"; }
swept() { cli INFO store | tr -d '\r' | sed -n 's/^store_expired_swept://p'; }
# Live keys for the GETs: key:0 .. key:9999 (ringport-bench's keyspace), no TTL.
for i in $(seq 0 9999); do printf 'SET key:%d value-%d\r\n' "$i" "$i"; done | cli --pipe >/dev/null
measure() { # label -> one line
  local before after row
  before=$(swept)
  row=$("$bench" -t "bench:secret@127.0.0.1:$port" -c 10 -r "$rate" -d 10s --warmup 1s \
    --mix GET --keyspace 10000 2>&1 | grep "^| 127.0.0.1:$port ")
  after=$(swept)
  awk -F'|' -v label="$1" -v swept=$((after - before)) '{ gsub(/ /, "", $0);
    printf "%-24s %8s req/s  p50 %7s us  p99 %8s us  p99.9 %8s us  swept meanwhile %7d\n", label, $6, $7, $9, $10, swept }' <<<"$row"
}
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); store: $store; GET at $rate/s on 10,000 live keys, 10 s each"
for round in $(seq "$rounds"); do
  measure "round $round, no sweep"
  # EXPIRED keys that all expire at one moment, written in MULTI/EXEC blocks of 10,000 (one
  # commit each); the measurement starts as they expire.
  at=$(( $(date +%s%3N) + 20000 ))
  awk -v n="$expired" -v at="$at" 'BEGIN { for (i = 1; i <= n; i++) {
      if (i % 10000 == 1) printf "MULTI\r\n"
      printf "SET gone:%d x PXAT %s\r\n", i, at
      if (i % 10000 == 0 || i == n) printf "EXEC\r\n" } }' | cli --pipe >/dev/null
  left=$(( at - $(date +%s%3N) ))
  [ "$left" -gt 0 ] || { echo "writing the keys took longer than 20 s; use fewer"; exit 1; }
  sleep "$(awk -v ms="$left" 'BEGIN { printf "%.3f", ms / 1000 }')"
  measure "round $round, sweeping"
  # The next round starts once the sweep removed them all (DBSIZE never counts expired keys).
  for _ in $(seq 1200); do [ "$(swept)" -ge $((round * expired)) ] && break; sleep 0.5; done
done
echo "(each sweeping window starts as $expired keys expire; the sweep removes at most 500 per transaction)"
