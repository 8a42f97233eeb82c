#!/usr/bin/env bash
# Did a change make a request dearer? Builds ringport at REV (a git revision) and at the working
# tree, then runs the same redis-benchmark PING loads against each, alternating A, B, A, B so
# machine noise falls on both, and prints the server's CPU time, syscalls and io_uring_enter
# calls per request (../shared/tools/server-cost) for each run, on io_uring and on epoll.
# Usage: bench/before-after.sh REV [REQUESTS] [ROUNDS]   (defaults: 300000 requests, 2 rounds)
# LOOPS="uring epoll" and PIPELINES="1 16" (the defaults) narrow what is measured (LOOPS may also
# name min-wait: io_uring with --uring-min-wait); TESTS="get"
# (redis-benchmark test names, default ping_mbulk) measures other commands (embedded store);
# CLIENTS="50 1000" (default 50) sets the connection counts.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/before-after.sh REV [REQUESTS] [ROUNDS]}
n=${2:-300000}
rounds=${3:-2}
cost=../shared/tools/server-cost
[ -x "$cost" ] || { echo "needs $cost" >&2; exit 2; }
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
. bench/two-builds.sh "$rev"
echo secret | "$work/after" user add bench --data "$work/data-after" >/dev/null
echo secret | "$work/before" user add bench --data "$work/data-before" >/dev/null
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); before = $rev ($(git rev-parse --short "$rev")), after = working tree"
echo "$n requests per run, redis-benchmark -r 100000"
printf '%-7s %-6s %-10s %-5s %-3s %s\n' "build" "loop" "test" "-c" "-P" "server cost"
for round in $(seq "$rounds"); do
  for loop in ${LOOPS:-uring epoll}; do
    for build in before after; do
      flags=()
      [ "$loop" = epoll ] && flags=(--backend epoll)
      [ "$loop" = min-wait ] && flags=(--uring-min-wait)
      "$work/$build" serve --listen 127.0.0.1:16398 --data "$work/data-$build" --log-level warn "${flags[@]}" >"$work/out" 2>&1 &
      pid=$!
      for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
      for test in ${TESTS:-ping_mbulk}; do
        for clients in ${CLIENTS:-50}; do
          for pipeline in ${PIPELINES:-1 16}; do
            load=(redis-benchmark -h 127.0.0.1 -p 16398 --user bench -a secret -t "$test" -c "$clients" -n "$n" -r 100000 -P "$pipeline" -q)
            printf '%-7s %-6s %-10s %-5s %-3s ' "$build" "$loop" "$test" "$clients" "$pipeline"
            "$cost" "$pid" "$n" -- "${load[@]}" 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g'
            echo
          done
        done
      done
      kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    done
  done
done
