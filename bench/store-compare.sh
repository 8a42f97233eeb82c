#!/usr/bin/env bash
# Store figures side by side in one run, on one throwaway PostgreSQL cluster:
#   pgbench -S -M prepared -c 16 -j 2 -T 20     (the ceiling for a point read on this box)
#   redis-benchmark -t get,set -c 16 -n 200000  through ringport on PostgreSQL
#   redis-benchmark -t get,set -c 16 -n 200000  through ringport on the embedded store
# Usage: bench/store-compare.sh [REQUESTS] [PGBENCH_SECONDS]   (defaults 200000, 20)
# Extra serve flags: RINGPORT_FLAGS="--store-threads 16" bench/store-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
seconds=${2:-20}
ci/ensure-postgres >/dev/null
bindir=$(ci/ensure-postgres | sed -n 's/^PostgreSQL found: //p')
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
cargo build --release -q -p ringport
work=$(mktemp -d /tmp/ringport-store-compare.XXXXXX)
chmod 755 "$work"
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$bindir/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/pg" "$work/sock"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg" "$work/sock"
as_pg "$bindir/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
as_pg "$bindir/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
  -o "-c listen_addresses='' -c unix_socket_directories=$work/sock -c max_connections=200 -p 5499" start >/dev/null
url="host=$work/sock port=5499 user=postgres dbname=postgres"

echo "machine: $(nproc) cores, kernel $(uname -r), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), $(date -u +%F)"
echo
as_pg "$bindir/pgbench" -h "$work/sock" -p 5499 -U postgres -i -s 10 -q postgres >/dev/null 2>&1
echo "pgbench -S -M prepared -c 16 -j 2 -T $seconds:"
as_pg "$bindir/pgbench" -h "$work/sock" -p 5499 -U postgres -S -M prepared -c 16 -j 2 -T "$seconds" postgres 2>/dev/null |
  grep -E "^(tps|latency average)" | sed 's/^/  /'

run_ringport() {
  local name=$1 port=$2; shift 2
  echo secret | target/release/ringport user add bench "$@" >/dev/null
  # shellcheck disable=SC2086
  target/release/ringport serve --listen 127.0.0.1:$port --log-level warn "$@" ${RINGPORT_FLAGS:-} >"$work/$name.out" 2>&1 &
  local pid=$!
  pids+=($pid)
  for _ in $(seq 100); do grep -q listening "$work/$name.out" && break; sleep 0.1; done
  echo
  echo "ringport on $name ${RINGPORT_FLAGS:-}: redis-benchmark -t get,set -c 16 -n $n"
  redis-benchmark -h 127.0.0.1 -p "$port" --user bench -a secret -t set,get -c 16 -n "$n" -r 100000 -q 2>/dev/null |
    tr '\r' '\n' | grep -E "requests per second" | sed 's/^ */  /'
}
run_ringport postgres 16395 --store "$url" --data "$work/unused"
run_ringport embedded 16396 --data "$work/embedded"
