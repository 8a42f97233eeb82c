#!/usr/bin/env bash
# Runs the same loads against redis-server and ringport on loopback with ringport-bench, and
# leaves the charts (.svg and .png), the .hgrm files, the JSON summaries and one Markdown table
# (table.md) in one folder.
#
# Loads (each against both servers in turn, one after the other):
#   closed-p1   closed loop, $CONNECTIONS connections, pipeline 1
#   closed-p16  closed loop, $CONNECTIONS connections, pipeline 16
#   open        open loop at $RATE requests/s (latency from intended send time)
#
# Usage: bench/compare.sh [OUT_DIR]          (default bench/results/<UTC date>)
# Each load runs REPEAT times against each server (medians and spreads in the JSON, for
# `ringport-bench diff`), with a per-second latency and throughput chart (NAME.timeline.svg).
# Settings (environment): DURATION=10s WARMUP=2s CONNECTIONS=50 RATE=20000 MIX=PING IDLE=0 REPEAT=3
#   REDIS_ONLY=1 skips ringport; REDIS_PORT=16479 RINGPORT_PORT=16480;
#   RINGPORT_FLAGS='--rings 1' adds flags to `ringport serve`; NO_BUILD=1 uses the binaries
#   already in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10s}
warmup=${WARMUP:-2s}
connections=${CONNECTIONS:-50}
rate=${RATE:-20000}
mix=${MIX:-PING}
idle=${IDLE:-0}
redis_port=${REDIS_PORT:-16479}
ringport_port=${RINGPORT_PORT:-16480}
out=${1:-bench/results/$(date -u +%Y-%m-%d)}

if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian package)"
  apt-get install -y -qq redis-server >/dev/null
fi
# PNG charts draw their text with a system font.
if ! fc-list 2>/dev/null | grep -qi dejavu; then
  echo "installing fonts-dejavu-core for PNG chart text"
  apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -q -p ringport-bench
  if [ -z "${REDIS_ONLY:-}" ]; then
    cargo build --release -q -p ringport
  fi
fi
bench=target/release/ringport-bench

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_listening() {
  for _ in $(seq 100); do
    if ! port_free "$1"; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:"; cat "$4"; return 1; }
    sleep 0.1
  done
  echo "$3 is not listening on port $1 after 10 s; its log:"
  cat "$4"
  return 1
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

for port in "$redis_port" $([ -z "${REDIS_ONLY:-}" ] && echo "$ringport_port"); do
  port_free "$port" || { echo "port $port is in use; set REDIS_PORT / RINGPORT_PORT"; exit 1; }
done

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --requirepass secret --maxclients 100000 --daemonize no >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_listening "$redis_port" "$redis_pid" redis-server "$work/redis.log"
targets=(--target "redis=secret@127.0.0.1:$redis_port")

if [ -z "${REDIS_ONLY:-}" ]; then
  echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
  # shellcheck disable=SC2086
  target/release/ringport serve --listen "127.0.0.1:$ringport_port" --data "$work/data" \
    --log-level warn ${RINGPORT_FLAGS:-} >"$work/ringport.log" 2>&1 &
  ringport_pid=$!
  pids+=("$ringport_pid")
  wait_listening "$ringport_port" "$ringport_pid" ringport "$work/ringport.log"
  targets+=(--target "ringport=bench:secret@127.0.0.1:$ringport_port")
fi

mkdir -p "$out"
common=("${targets[@]}" --connections "$connections" --duration "$duration" --warmup "$warmup"
  --mix "$mix" --idle "$idle" --repeat "${REPEAT:-3}")
run() {
  local name=$1
  shift
  echo "== $name"
  "$bench" "${common[@]}" "$@" \
    --hgrm "$out/$name.hgrm" --json "$out/$name.json" --table "$out/$name.md" \
    --plot "$out/$name.svg" --plot "$out/$name.png" --timeline-plot "$out/$name.timeline.svg" >/dev/null
}
run closed-p1 --pipeline 1
run closed-p16 --pipeline 16
run open --rate "$rate"

{
  echo "# ringport vs redis-server: ringport-bench"
  echo
  echo "Made by \`bench/compare.sh\` ($(git rev-parse --short HEAD 2>/dev/null || echo '?'))." \
    "Charts: closed-p1.svg, closed-p16.svg, open.svg (and .png) (latency by percentile; in open.svg the" \
    "dashed lines are service time, the solid ones latency from the intended send time)."
  for name in closed-p1 closed-p16 open; do
    echo
    echo "## $name"
    echo
    cat "$out/$name.md"
  done
} >"$out/table.md"
cat "$out/table.md"
echo
echo "results in $out"
