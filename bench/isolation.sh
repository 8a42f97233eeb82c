#!/usr/bin/env bash
# Can heavy commands disturb PING and AUTH? For each --pool-priority (normal, batch, idle), on
# one ringport (embedded store), prints side by side:
#   PING p50/p99 at 5,000/s on 50 sessions (open loop, corrected for coordinated omission):
#     alone; while 16 sessions keep the compute pool busy with HASH 20000 (closed loop); while
#     64 sessions keep every store worker in a slow call (SLEEP 50, closed loop)
#   AUTH p50/p99 at 50/s on 5 sessions (re-AUTH, the credential cache warm: the queueing, not
#     argon2id) under the same HASH flood, and the flood's own HASH throughput.
# Usage: bench/isolation.sh [SECONDS]   (default 10 per phase; ROUNDS=1: how many times each
#        phase runs, in turn with the others, medians and ranges printed; PRIORITIES="normal
#        batch idle")
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release -q -p ringport -p ringport-bench
work=$(mktemp -d /tmp/ringport-isolation.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
bench=target/release/ringport-bench
port=16420
target="bench:secret@127.0.0.1:$port"
# "p50 p99" in µs of the last run's JSON, for one command (or all).
pct() { jq -r --arg c "$1" '.targets[0] | (if $c == "" then .latency_us else .commands[$c].latency_us end) | "\(.p50|floor) \(.p99|floor)"' "$2"; }
probe() { # name rate connections mix -> json file
  "$bench" -t "$target" --rate "$2" -c "$3" --mix "$4" -d "${seconds}s" --warmup 2s --json "$work/$1.json" >/dev/null 2>&1
}
flood() { # mix connections -> starts a closed-loop flood in the background, its json in flood.json
  "$bench" -t "$target" -c "$2" --mix "$1" -d "$((seconds + 6))s" --json "$work/flood.json" >/dev/null 2>&1 &
  flood_pid=$!
  pids+=("$flood_pid")
  sleep 2
}
rounds=${ROUNDS:-1}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { tr ' ' '\n' | grep -v '^$' | sort -n | sed -n '1p;$p' | paste -sd- -; }
echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); $rounds round(s) of every phase, in turn"
printf '%-8s %-22s %8s %8s %14s %9s %8s  %s\n' "priority" "phase" "p50 µs" "p99 µs" "p99 range" "p99/alone" "flood/s" "p99 per round"
for priority in ${PRIORITIES:-normal batch idle}; do
  rm -rf "$work/data"
  echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
  target/release/ringport serve --listen 127.0.0.1:$port --data "$work/data" --log-level warn \
    --pool-priority "$priority" >"$work/server.out" 2>&1 &
  server=$!
  pids+=("$server")
  for _ in $(seq 100); do grep -q listening "$work/server.out" && break; sleep 0.1; done
  declare -A p50s=() p99s=() floods=()
  # The phases take turns, round after round, so that the host's slow moments fall on all of
  # them: a phase's p99 is judged against the range "alone" spans, not against one reading.
  for _ in $(seq "$rounds"); do
    probe ping 5000 50 PING
    read -r p50 p99 < <(pct "" "$work/ping.json")
    p50s[alone]+=" $p50"; p99s[alone]+=" $p99"
    flood 'HASH 20000 data' 16
    probe ping 5000 50 PING
    read -r p50 p99 < <(pct "" "$work/ping.json")
    wait "$flood_pid" || true
    p50s[hash]+=" $p50"; p99s[hash]+=" $p99"; floods[hash]+=" $(jq -r '.targets[0].throughput_rps|floor' "$work/flood.json")"
    flood 'HASH 20000 data' 16
    probe auth 50 5 'AUTH bench secret'
    read -r p50 p99 < <(pct "" "$work/auth.json")
    wait "$flood_pid" || true
    p50s[auth]+=" $p50"; p99s[auth]+=" $p99"; floods[auth]+=" $(jq -r '.targets[0].throughput_rps|floor' "$work/flood.json")"
    flood 'SLEEP 50' 64
    probe ping 5000 50 PING
    read -r p50 p99 < <(pct "" "$work/ping.json")
    wait "$flood_pid" || true
    p50s[store]+=" $p50"; p99s[store]+=" $p99"; floods[store]+=" $(jq -r '.targets[0].throughput_rps|floor' "$work/flood.json")"
  done
  alone=$(median <<<"${p99s[alone]}")
  for phase in alone hash auth store; do
    case $phase in
      alone) name="PING alone" ;; hash) name="PING, HASH flood" ;;
      auth) name="AUTH, HASH flood" ;; store) name="PING, store saturated" ;;
    esac
    p99=$(median <<<"${p99s[$phase]}")
    ratio=-
    [ "$phase" != auth ] && ratio=$(awk -v a="$p99" -v b="$alone" 'BEGIN { printf "%.2fx", a / b }')
    flood=-
    [ -n "${floods[$phase]:-}" ] && flood=$(median <<<"${floods[$phase]}")
    printf '%-8s %-22s %8s %8s %14s %9s %8s %s\n' "$priority" "$name" "$(median <<<"${p50s[$phase]}")" "$p99" \
      "$(range <<<"${p99s[$phase]}")" "$ratio" "$flood" "${p99s[$phase]}"
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
echo "(ringport-bench, ${seconds} s per phase after 2 s warm-up; medians over the rounds; floods closed loop; default --compute-threads and --store-threads)"
