#!/usr/bin/env bash
# A trivial command served by a Python worker pool (docs/workers.md), side by side in one run
# with the same command inline (ECHO) and with the seed design workers replace: one Python
# asyncio server that holds the sessions and runs the command itself (bench/seed_asyncio.py).
#   1. CPU per request (redis-benchmark -c 50, -n REQUESTS): the server's own (server-cost: CPU,
#      syscalls) plus, for ringport with workers, the worker processes' CPU, from /proc;
#   2. latency at a fixed rate (ringport-bench -r RATE, open loop): p50 and p99;
#   3. RSS per idle authenticated session, slope between LOW and HIGH sessions (held by
#      ringport-bench --idle in a process of its own); for ringport + workers the workers' RSS
#      is counted too (it does not grow with sessions).
# Usage: bench/worker-compare.sh [REQUESTS] [RATE] [LOW] [HIGH]   (defaults 100000 2000 2000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
rate=${2:-2000}
low=${3:-2000}
high=${4:-10000}
cost=../shared/tools/server-cost
cargo build --release -q -p ringport -p ringport-bench
bench=target/release/ringport-bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 20000

echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
target/release/ringport serve --config examples/workers/service.toml --listen 127.0.0.1:16501 \
  --data "$work/data" --log-level warn --max-sessions 100000 >"$work/ringport.out" 2>&1 &
pids+=($!); ringport_pid=$!
python3 bench/seed_asyncio.py 16502 bench secret >"$work/seed.out" 2>&1 &
pids+=($!); seed_pid=$!
for _ in $(seq 100); do
  grep -q "listening" "$work/ringport.out" && grep -q "listening" "$work/seed.out" && break
  sleep 0.1
done

ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
workers() { pgrep -P "$ringport_pid" | tr '\n' ' '; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
hz=$(getconf CLK_TCK)

echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); $(python3 --version)"
echo
echo "1. CPU per request, redis-benchmark -c 50 -n $n:"
for case in "ringport ECHO (inline)|16501|$ringport_pid|ECHO world" \
            "ringport GREET (worker)|16501|$ringport_pid|GREET world" \
            "seed asyncio GREET|16502|$seed_pid|GREET world"; do
  IFS='|' read -r name port pid command <<<"$case"
  w=$(workers); [ "$pid" = "$seed_pid" ] && w=""
  w0=$(ticks $w)
  # shellcheck disable=SC2086
  line=$("$cost" "$pid" "$n" -- redis-benchmark -p "$port" --user bench -a secret -n "$n" -c 50 -q $command 2>/dev/null | tr '\n' ' ')
  w1=$(ticks $w)
  extra=""
  [ -n "$w" ] && extra=$(awk -v t=$((w1 - w0)) -v hz="$hz" -v n="$n" 'BEGIN { printf "; worker processes cpu per request %.2f us", 1e6 * t / hz / n }')
  echo "$name: $line$extra"
done
echo
echo "2. latency at $rate requests/s (ringport-bench, open loop, 10 connections, 10 s):"
for case in "ringport ECHO (inline)|16501|ECHO x" "ringport GREET (worker)|16501|GREET x" "seed asyncio GREET|16502|GREET x"; do
  IFS='|' read -r name port mix <<<"$case"
  out=$("$bench" -t "bench:secret@127.0.0.1:$port" -c 10 -r "$rate" -d 10s --warmup 2s --mix "$mix" 2>&1)
  # The table row: | target | load | requests | errors | req/s | p50 | p90 | p99 | ...
  row=$(grep "^| 127.0.0.1:$port " <<<"$out")
  lag=$(grep -o "send lag p99 [0-9]* µs" <<<"$out" || true)
  awk -F'|' -v name="$name" -v lag="$lag" '{ gsub(/ /, "", $0); printf "%s: %s req/s, errors %s, p50 %s us, p99 %s us, p99.9 %s us%s\n", name, $6, $5, $7, $9, $10, (lag == "" ? "" : " (client " lag ")") }' <<<"$row"
done
echo
echo "3. RSS per idle authenticated session, slope between $low and $high:"
held_rss() { # port n pids... -> RSS kB with n idle sessions held
  local port=$1 n=$2; shift 2
  "$bench" -t "bench:secret@127.0.0.1:$port" --idle "$n" -c 1 --rate 10 -d 600s --threads 1 >/dev/null 2>&1 &
  local holder=$!
  sleep $((3 + n / 2000))
  local r; r=$(rss_kb "$@")
  kill "$holder"; wait "$holder" 2>/dev/null || true
  sleep 2
  echo "$r"
}
printf '%-26s %12s %12s %14s\n' server "RSS@$low kB" "RSS@$high kB" "B/session"
for case in "ringport + workers|16501|ringport" "seed asyncio|16502|seed"; do
  IFS='|' read -r name port which <<<"$case"
  if [ "$which" = ringport ]; then set -- "$ringport_pid" $(workers); else set -- "$seed_pid"; fi
  a=$(held_rss "$port" "$low" "$@"); b=$(held_rss "$port" "$high" "$@")
  printf '%-26s %12s %12s %14s\n' "$name" "$a" "$b" "$(awk -v a="$a" -v b="$b" -v n=$((high - low)) 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')"
done
