#!/usr/bin/env bash
# How long an idle server takes to go away after SIGTERM, on the embedded store and on a
# throwaway PostgreSQL: SIGTERM -> the "stopped" log line (the drain), and "stopped" -> the
# process's exit (what waits after the drain: threads joining, the store closing).
# Usage: bench/exit-time.sh [RUNS]   (default 5; --drain-grace 0, so no readiness grace counts)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release -q -p ringport
work=$(mktemp -d)
. bench/throwaway-pg.sh 16490
trap 'pg_stop; rm -rf "$work"' EXIT
echo secret | target/release/ringport user add u --data "$work/data" >/dev/null
echo secret | target/release/ringport user add u --store "$url" >/dev/null
ms_of_log() { date -d "$(grep -o '^[^ ]*Z' <<<"$1" | sed 's/\x1b\[[0-9;]*m//g')" +%s%N; }
for store in embedded postgres; do
  flag=(--data "$work/data"); [ $store = postgres ] && flag=(--store "$url")
  for i in $(seq "$runs"); do
    target/release/ringport serve --listen 127.0.0.1:16481 "${flag[@]}" --drain-grace 0 \
      --log-color never >"$work/out" 2>"$work/err" &
    pid=$!
    for _ in $(seq 100); do grep -q ready "$work/err" && break; sleep 0.05; done
    sleep 0.5
    t0=$(date +%s%N); kill -TERM $pid; wait $pid || true; t1=$(date +%s%N)
    stopped=$(ms_of_log "$(grep 'stopped' "$work/err" | tail -1)")
    printf '%-8s run %d: SIGTERM -> stopped %4d ms, stopped -> exit %4d ms\n' $store "$i" \
      $(( (stopped - t0) / 1000000 )) $(( (t1 - stopped) / 1000000 ))
  done
done
