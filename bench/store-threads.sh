#!/usr/bin/env bash
# What a GET on PostgreSQL costs with each --store-threads count: for each count, in alternating
# rounds on one throwaway cluster, redis-benchmark GET at -c CLIENTS (after a short SET load to
# fill the keys), with the GET/s it reached and the CPU time per GET of ringport and of the
# PostgreSQL processes (utime + stime from /proc, before and after), and ringport's context
# switches per GET (all its threads, from /proc: each is a thread put to sleep or preempted, the
# cost of handing a GET between threads). Fewer workers take bigger
# batches (every GET queued at the moment goes into one query), which is cheaper on both sides.
# With REV=<git revision>, each count runs on a build of REV too ("before") beside the working
# tree ("after"), in the same rounds: what a change to the store path did, side by side.
# Usage: bench/store-threads.sh ["1 2 4"] [CLIENTS] [REQUESTS]   (defaults "1 2 4" 16 200000;
#        ROUNDS=3, REV unset)
set -euo pipefail
cd "$(dirname "$0")/.."
configs=${1:-"1 2 4"}
clients=${2:-16}
n=${3:-200000}
rounds=${ROUNDS:-3}
ci/ensure-postgres >/dev/null
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
if [ -n "${REV:-}" ]; then
  . bench/two-builds.sh "$REV"
  eval "$(declare -f cleanup | sed '1s/cleanup/two_builds_cleanup/')"
  builds="before after"
else
  cargo build --release -q -p ringport
  work=$(mktemp -d /tmp/ringport-store-threads.XXXXXX)
  two_builds_cleanup() { rm -rf "$work"; }
  cp target/release/ringport "$work/after"
  builds=after
fi
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  pg_stop
  two_builds_cleanup
}
trap cleanup EXIT
. bench/throwaway-pg.sh 5497
echo secret | "$work/after" user add bench --store "$url" --data "$work/unused" >/dev/null
hz=$(getconf CLK_TCK)
ticks() { # summed utime + stime of the PIDs given
  local t=0 p
  for p in "$@"; do [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
switches() { # context switches so far, summed over every thread of PID
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'
}
echo "machine: $(nproc) cores, kernel $(uname -r), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), $(date -u +%F); ringport $(git rev-parse --short HEAD)${REV:+ (before: $REV)}; GET -c $clients, $n requests"
port=16460
for round in $(seq "$rounds"); do
  for threads in $configs; do
    for build in $builds; do
      "$work/$build" serve --listen 127.0.0.1:$port --log-level warn --store "$url" \
        --data "$work/unused" --store-threads "$threads" >"$work/out" 2>&1 &
      pid=$!
      for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
      redis-benchmark -h 127.0.0.1 -p $port --user bench -a secret -t set -c 16 -n 20000 -r 100000 -q >/dev/null 2>&1
      sleep 0.5
      # shellcheck disable=SC2046
      set -- $(pgrep -u postgres -f "$work/pg" || true) $(pgrep -u postgres -P "$(head -1 "$work/pg/postmaster.pid")" || true)
      a=$(ticks "$pid"); b=$(ticks "$@"); c=$(switches "$pid")
      rps=$(redis-benchmark -h 127.0.0.1 -p $port --user bench -a secret -t get -c "$clients" -n "$n" -r 100000 -q 2>/dev/null |
        tr '\r' '\n' | sed -n 's/.*GET: \([0-9.]*\) requests per second.*/\1/p' | tail -1)
      a2=$(ticks "$pid"); b2=$(ticks "$@"); c2=$(switches "$pid")
      awk -v r="$round" -v build="$build" -v t="$threads" -v rps="$rps" -v a=$((a2 - a)) -v b=$((b2 - b)) -v c=$((c2 - c)) -v n="$n" -v hz="$hz" 'BEGIN {
        us = 1e6 / hz / n
        printf "round %s  %-6s --store-threads %-2s  GET/s %7.0f  ringport %5.1f µs/GET  PostgreSQL %5.1f µs/GET  together %5.1f  ringport context switches/GET %.2f\n",
          r, build, t, rps, a * us, b * us, (a + b) * us, c / n }'
      kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    done
  done
done
