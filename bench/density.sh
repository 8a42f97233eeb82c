#!/usr/bin/env bash
# Sessions past the descriptor limit: one ringport server (the working tree, release build)
# holding idle authenticated sessions at three counts, up to HIGH, more than RLIMIT_NOFILE (20,000
# here, for the server and for each client process). The sessions are held by ringport-bench
# --idle in several processes of at most 18,000 sessions each, spread over 127.0.0.x source
# addresses. For each count: the server's RSS, its open descriptors and the sessions it keeps on
# direct descriptors (io_uring's registered-file tables), and the RSS slope (bytes per session)
# between the counts, so per-ring fixed costs do not count.
# Then PING's server CPU per request (redis-benchmark ping_inline, ../shared/tools/server-cost) with
# direct descriptors on (the default) and off (--uring-disable direct-descriptors), in alternating
# rounds on the same binary.
# Usage: bench/density.sh [HIGH] [ROUNDS] [REQUESTS]     (defaults 36000 3 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
high=${1:-36000}
rounds=${2:-3}
requests=${3:-200000}
low=$((high / 6))
mid=$((high / 2))
per_holder=18000
cost=../shared/tools/server-cost
[ -x "$cost" ] || { echo "needs $cost" >&2; exit 2; }
cargo build --release -q -p ringport -p ringport-bench
bench=target/release/ringport-bench
port=16440
work=$(mktemp -d)
pid=""
holders=()
stop_holders() {
  for h in "${holders[@]}"; do kill "$h" 2>/dev/null || true; done
  for h in "${holders[@]}"; do wait "$h" 2>/dev/null || true; done
  holders=()
}
cleanup() {
  stop_holders
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null

. bench/one-server.sh
clients() { cli INFO clients | sed -n 's/^connected_clients://p'; }
direct() { cli INFO rings | grep -o 'direct=[0-9]*' | awk -F= '{s += $2} END {print s + 0}'; }
# Holds N idle sessions in processes of at most $per_holder each; returns once the server has them.
hold() {
  local n=$1 left=$1 take
  while [ "$left" -gt 0 ]; do
    take=$((left < per_holder ? left : per_holder))
    "$bench" -t "bench:secret@127.0.0.1:$port" --idle "$take" -c 1 --rate 10 -d 900s --threads 1 \
      >"$work/holder.$left" 2>&1 &
    holders+=($!)
    left=$((left - take))
  done
  for _ in $(seq 1500); do
    [ "$(clients || echo 0)" -ge "$n" ] 2>/dev/null && { sleep 3; return 0; }
    sleep 0.2
  done
  echo "the server reached only $(clients) sessions of $n; holder output:" >&2
  tail -n 5 "$work"/holder.* >&2
  exit 1
}

echo "machine: $(nproc) cores, kernel $(uname -r), RLIMIT_NOFILE $(ulimit -Hn), $(date -u +%F); ringport $(git rev-parse --short HEAD) + working tree"
echo
start_server
printf '%-10s %10s %12s %14s %16s\n' sessions "RSS kB" descriptors "on direct" "B/session since"
prev_n=0
prev_rss=$(rss_kb "$pid")
printf '%-10s %10s %12s %14s %16s\n' 0 "$prev_rss" "$(ls /proc/$pid/fd | wc -l)" "$(direct)" -
for n in $low $mid $high; do
  stop_holders
  hold "$n"
  rss=$(rss_kb "$pid")
  slope=$(awk -v a="$prev_rss" -v b="$rss" -v n=$((n - prev_n)) 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
  printf '%-10s %10s %12s %14s %16s\n' "$((n + 1))" "$rss" "$(ls /proc/$pid/fd | wc -l)" "$(direct)" \
    "$slope (from $prev_n)"
  prev_n=$n
  prev_rss=$rss
done
stop_holders
stop_server

echo
echo "PING server CPU per request, direct descriptors on and off, $rounds alternating rounds"
for r in $(seq "$rounds"); do
  for mode in on off; do
    if [ $mode = on ]; then start_server; else start_server --uring-disable direct-descriptors; fi
    for c in 50 1000; do
      printf 'round %s direct %-3s -c %-4s ' "$r" $mode $c
      "$cost" "$pid" "$requests" -- redis-benchmark -h 127.0.0.1 -p $port --user bench -a secret \
        -t ping_inline -c $c -n "$requests" -q 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g'
      echo
    done
    stop_server
  done
done
