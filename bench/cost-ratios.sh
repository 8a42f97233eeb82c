#!/usr/bin/env bash
# Issue 15's CPU-per-request targets, ranked against the noise: ringport on io_uring, ringport on
# epoll and redis-server run side by side, each load on all three in turn, ROUNDS times. Prints
# every run's server CPU µs and io_uring_enter per request (../shared/tools/server-cost), each
# round's ratios (ringport / redis-server, io_uring / epoll), and their median and range: a
# ratio whose range stays on one side of its target is ranked above the noise.
# Each run also prints the server's sleeps per request (voluntary context switches of all its
# threads), and the script starts with ringport-wake-cost's figures for this machine: where a
# sleep costs tens of µs of CPU, a server whose threads sleep less per request is cheaper per
# request whatever its own code costs.
# Loads: redis-benchmark ping_inline at -c 50 -P 1, -c 1000 -P 1 and -c 50 -P 16.
# Usage: bench/cost-ratios.sh [REQUESTS] [ROUNDS]   (defaults 300000, 5)
# Extra ringport serve flags: RINGPORT_FLAGS="--uring-min-wait" bench/cost-ratios.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300000}
rounds=${2:-5}
cost=../shared/tools/server-cost
[ -x "$cost" ] || { echo "needs $cost" >&2; exit 2; }
command -v redis-server >/dev/null || apt-get install -y -qq redis-server redis-tools >/dev/null
cargo build --release -q -p ringport -p ringport-bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

echo secret | target/release/ringport user add bench --data "$work/uring" >/dev/null
echo secret | target/release/ringport user add bench --data "$work/epoll" >/dev/null
declare -A pid port=([uring]=16381 [epoll]=16382 [redis]=16383)
# shellcheck disable=SC2086
target/release/ringport serve --listen 127.0.0.1:${port[uring]} --data "$work/uring" --log-level warn ${RINGPORT_FLAGS:-} >"$work/uring.out" 2>&1 &
pids+=($!); pid[uring]=$!
# shellcheck disable=SC2086
target/release/ringport serve --listen 127.0.0.1:${port[epoll]} --data "$work/epoll" --log-level warn --backend epoll ${RINGPORT_FLAGS:-} >"$work/epoll.out" 2>&1 &
pids+=($!); pid[epoll]=$!
redis-server --port "${port[redis]}" --bind 127.0.0.1 --save '' --appendonly no --user bench on '>secret' '~*' '&*' '+@all' >"$work/redis.out" 2>&1 &
pids+=($!); pid[redis]=$!
for p in "${port[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" --user bench --pass secret --no-auth-warning PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
done

echo "machine: $(nproc) cores, kernel $(uname -r), redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), $(date -u +%F); ringport ${RINGPORT_FLAGS:-(default flags)}"
echo "$n requests per run (5x that at -P 16), redis-benchmark ping_inline; each load runs on the three servers in turn, $rounds rounds"
target/release/ringport-wake-cost
# Sleeps so far: voluntary context switches summed over the server's threads.
sleeps() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ { s += $2 } END { print s }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -g | sed -n '1p;$p' | paste -sd- -; }
declare -A cpu ratios
loads=("50 1" "1000 1" "50 16")
for round in $(seq "$rounds"); do
  for load in "${loads[@]}"; do
    read -r c p <<<"$load"
    # A pipelined request costs a tenth of an unpipelined one: five times the requests keep its
    # CPU time well above /proc's 10 ms ticks.
    runs=$n
    [ "$p" -gt 1 ] && runs=$((n * 5))
    for server in uring epoll redis; do
      # Bounded: redis-benchmark retries a refused connection for ever.
      s0=$(sleeps "${pid[$server]}")
      out=$("$cost" "${pid[$server]}" "$runs" -- timeout 300 redis-benchmark -p "${port[$server]}" --user bench -a secret \
        -t ping_inline -c "$c" -P "$p" -n "$runs" -q)
      slept=$(awk -v a="$s0" -v b="$(sleeps "${pid[$server]}")" -v n="$runs" 'BEGIN { printf "%.3f", (b - a) / n }')
      us=$(sed -n 's/.*server cpu per request \([0-9.]*\) us.*/\1/p' <<<"$out")
      enters=$(sed -n 's/^io_uring_enter per request \([0-9.]*\).*/\1/p' <<<"$out")
      cpu[$server]=$us
      printf 'round %s  -c %-5s -P %-3s %-6s %6s µs/req  io_uring_enter/req %-6s sleeps/req %s\n' "$round" "$c" "$p" "$server" "$us" "${enters:--}" "$slept"
    done
    ratios["$load vs redis"]+=" $(awk -v a="${cpu[uring]}" -v b="${cpu[redis]}" 'BEGIN { printf "%.2f", a / b }')"
    ratios["$load vs epoll"]+=" $(awk -v a="${cpu[uring]}" -v b="${cpu[epoll]}" 'BEGIN { printf "%.2f", a / b }')"
  done
done
echo
printf '%-28s %-8s %-8s %-12s %s\n' "ratio (server CPU per request)" "target" "median" "range" "per round"
for load in "${loads[@]}"; do
  read -r c p <<<"$load"
  case "$c $p" in "50 1") target=0.9 ;; "1000 1") target=0.8 ;; *) target=0.7 ;; esac
  v=${ratios["$load vs redis"]}
  printf '%-28s %-8s %-8s %-12s %s\n' "io_uring/redis -c $c -P $p" "<= $target" "$(median <<<"$v")" "$(range <<<"$v")" "$v"
done
v=${ratios["1000 1 vs epoll"]}
printf '%-28s %-8s %-8s %-12s %s\n' "io_uring/epoll -c 1000 -P 1" "<= 0.9" "$(median <<<"$v")" "$(range <<<"$v")" "$v"
