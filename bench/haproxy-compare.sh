#!/usr/bin/env bash
# Scale-out figures in one run: three ringport instances on one throwaway PostgreSQL (Unix socket)
# behind HAProxy, running deploy/haproxy.cfg's defaults, frontend and backend (addresses put in):
#   requests/s of redis-benchmark PING (mbulk), SET and GET (-c 50; on one key, then on
#   -r 100000 keys), through HAProxy to the three instances and direct to one instance, side by
#   side (ROUNDS rounds, alternating, medians), with how HAProxy spread the benchmark's sessions
#   over the instances;
#   then IDLE authenticated sessions held open through HAProxy (ringport-bench --idle): sessions
#   and RSS per instance, and HAProxy's RSS.
# Usage: bench/haproxy-compare.sh [REQUESTS] [IDLE]   (defaults 100000, 6000; ROUNDS=3)
# Extra serve flags: RINGPORT_FLAGS="--store-threads 8" bench/haproxy-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
idle=${2:-6000}
rounds=${ROUNDS:-3}
ci/ensure-postgres >/dev/null
ci/ensure-clients >/dev/null
haproxy=$(PATH=$PATH:/usr/sbin command -v haproxy)
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
cargo build --release -q -p ringport -p ringport-bench
work=$(mktemp -d /tmp/ringport-haproxy-compare.XXXXXX)
# Ports below the ephemeral range, as the other bench scripts use.
lb_port=16440
stats_port=16444
ports=(16441 16442 16443)
metrics=(16451 16452 16453)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_stop
  rm -rf "$work"
}
trap cleanup EXIT
. bench/throwaway-pg.sh 5498

echo secret | target/release/ringport user add bench --store "$url" --data "$work/unused" >/dev/null
for i in 0 1 2; do
  # shellcheck disable=SC2086
  target/release/ringport serve --listen "127.0.0.1:${ports[$i]}" --metrics-addr "127.0.0.1:${metrics[$i]}" \
    --store "$url" --data "$work/unused" --log-level warn ${RINGPORT_FLAGS:-} >"$work/ringport$i.out" 2>&1 &
  pids+=($!); server_pid[$i]=$!
done
for i in 0 1 2; do
  for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${metrics[$i]}/ready" 2>/dev/null)" = 200 ] && break
    sleep 0.1
  done
done

# The shipped config without its global section (chroot, user, daemon: a system install's),
# bound to our port, with our three instances as its servers.
servers=""
for i in 0 1 2; do servers+="    server ringport-$i 127.0.0.1:${ports[$i]} check port ${metrics[$i]}\n"; done
{
  printf 'global\n    maxconn 9000\n\n'
  printf 'listen stats\n    bind 127.0.0.1:%s\n    mode http\n    stats enable\n    stats uri /\n\n' $stats_port
  awk -v bind="127.0.0.1:$lb_port" -v servers="$servers" '
    /^[^ \t#]/ { section = $1 }
    section == "global" { next }
    $1 == "bind" { print "    bind " bind; next }
    $1 == "server" { if (!done) { printf "%s", servers; done = 1 }; next }
    { print }' deploy/haproxy.cfg
} >"$work/haproxy.cfg"
"$haproxy" -db -f "$work/haproxy.cfg" >"$work/haproxy.out" 2>&1 &
pids+=($!); haproxy_pid=$!
up() { curl -s "http://127.0.0.1:$stats_port/;csv" | grep -c '^ringport,ringport-[0-9],.*,UP,' || true; }
for _ in $(seq 100); do [ "$(up)" = 3 ] && break; sleep 0.1; done
[ "$(up)" = 3 ] || { echo "HAProxy never saw the three instances UP:"; cat "$work/haproxy.out"; exit 1; }

# requests/s per test of one redis-benchmark run, as "ping set get"; extra arguments (-r N) go
# to redis-benchmark. Without -r every client SETs and GETs the one key "key:__rand_int__".
# A test that printed no figure (redis-benchmark gave up) shows as "-", with its output on stderr.
rb() {
  local port=$1; shift
  redis-benchmark -h 127.0.0.1 -p "$port" --user bench -a secret -t ping_mbulk,get,set -c 50 -n "$n" -q "$@" \
    >"$work/rb.out" 2>&1 || true
  tr '\r' '\n' <"$work/rb.out" | awk -F': ' '/requests per second/ { split($2, v, " "); r[$1] = int(v[1]) }
      END { for (t in want) if (r[want[t]] == "") r[want[t]] = "-"; print r["PING_MBULK"], r["SET"], r["GET"] }
      BEGIN { want[1] = "PING_MBULK"; want[2] = "SET"; want[3] = "GET" }'
  if tr '\r' '\n' <"$work/rb.out" | grep -qv -e 'requests per second' -e 'rps=' -e 'Could not fetch server CONFIG' -e '^ *$'; then
    echo "redis-benchmark -p $port $*:" >&2
    tr '\r' '\n' <"$work/rb.out" | grep -v -e 'rps=' -e '^ *$' | tail -5 >&2
  fi
}
accepted() { # sessions accepted so far by instance $1
  curl -s "http://127.0.0.1:${metrics[$1]}/metrics" | awk '/^ringport_sessions_accepted_total/ { s += $2 } END { print s + 0 }'
}
median() { tr ' ' '\n' | grep -v -e '^$' -e '^-$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

echo "machine: $(nproc) cores, kernel $(uname -r), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), $("$haproxy" -v | head -1 | awk '{print "HAProxy", $3}'), $(date -u +%F); ringport ${RINGPORT_FLAGS:-(default flags)}"
# Two key patterns: the one key of redis-benchmark's default (concurrent SETs of it fold into one
# row per batch, so PostgreSQL does little) and -r 100000 (a row per key, as real data is).
declare -A rows
for keys in one random; do
  [ $keys = one ] && extra=() || extra=(-r 100000)
  direct_ping=""; direct_set=""; direct_get=""; lb_ping=""; lb_set=""; lb_get=""
  for round in $(seq "$rounds"); do
    read -r dp ds dg < <(rb "${ports[0]}" "${extra[@]}")
    direct_ping+=" $dp"; direct_set+=" $ds"; direct_get+=" $dg"
    before=(); for i in 0 1 2; do before[$i]=$(accepted $i); done
    read -r lp ls lg < <(rb $lb_port "${extra[@]}")
    lb_ping+=" $lp"; lb_set+=" $ls"; lb_get+=" $lg"
    spread=""; for i in 0 1 2; do spread+="$(( $(accepted $i) - before[i] ))/"; done
    echo "keys $keys, round $round: direct PING $dp SET $ds GET $dg; through HAProxy PING $lp SET $ls GET $lg (sessions per instance ${spread%/})"
  done
  for v in direct_ping direct_set direct_get lb_ping lb_set lb_get; do printf -v "$v" '%s' "$(median <<<"${!v}")"; done
  rows[$keys]=$(
    printf '%-12s %-18s %22s %26s %8s\n' "PING_MBULK" "${extra[*]:-(one key)}" "$direct_ping" "$lb_ping" "$(ratio "$lb_ping" "$direct_ping")"
    printf '%-12s %-18s %22s %26s %8s\n' "SET" "${extra[*]:-(one key)}" "$direct_set" "$lb_set" "$(ratio "$lb_set" "$direct_set")"
    printf '%-12s %-18s %22s %26s %8s\n' "GET" "${extra[*]:-(one key)}" "$direct_get" "$lb_get" "$(ratio "$lb_get" "$direct_get")"
  )
done
echo
printf '%-12s %-18s %22s %26s %8s\n' "test" "keys" "direct, 1 instance /s" "HAProxy, 3 instances /s" "ratio"
echo "${rows[one]}"
echo "${rows[random]}"
echo "(medians of $rounds rounds; redis-benchmark -t ping_mbulk,get,set -c 50 -n $n [-r 100000], each round direct first, then through HAProxy)"

echo
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for i in 0 1 2; do rss0[$i]=$(rss_kb "${server_pid[$i]}"); done
haproxy_rss0=$(rss_kb "$haproxy_pid")
target/release/ringport-bench -t "bench:secret@127.0.0.1:$lb_port" --idle "$idle" -c 1 --rate 10 -d 600s --threads 1 >/dev/null 2>&1 &
holder=$!; pids+=($holder)
sessions() { curl -s "http://127.0.0.1:${metrics[$1]}/metrics" | awk '/^ringport_sessions\{/ { s += $2 } END { print s + 0 }'; }
for _ in $(seq 600); do
  total=0; for i in 0 1 2; do total=$(( total + $(sessions $i) )); done
  [ "$total" -ge "$idle" ] && break
  sleep 0.2
done
sleep 3
echo "$idle idle authenticated sessions through HAProxy (ringport-bench --idle), per instance:"
for i in 0 1 2; do
  echo "  instance $i: $(sessions $i) sessions, RSS $(rss_kb "${server_pid[$i]}") kB (${rss0[$i]} kB before)"
done
echo "  HAProxy: RSS $(rss_kb "$haproxy_pid") kB (${haproxy_rss0} kB before)"
kill "$holder" 2>/dev/null || true
