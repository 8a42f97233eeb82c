#!/usr/bin/env bash
# Store figures side by side in one run, on one throwaway PostgreSQL cluster (Unix socket):
#   the ceilings, straight from pgbench (-M prepared -j 2 -T SECONDS):
#     point read   pgbench -S at -c 16 and at -c 200
#     upsert       a custom script doing ringport's durable SET (INSERT ... ON CONFLICT) at -c 16
#   ringport on that PostgreSQL, each against its ceiling (the ratio), with two load generators:
#     redis-benchmark (-r 100000 keys, 3-byte values): SET at -c 16, GET at -c 16 and -c 200, and
#       GET at -c 16 with --threads 2
#     ringport-bench (closed loop, --threads 2 as pgbench's -j 2, 100,000 keys, 3-byte values,
#       SECONDS): SET at -c 16, GET at -c 16 and -c 200, with their p50/p99
#   For the reads at -c 16, what each request cost in CPU: the load generator's own (its CPU time
#   over the run) and the server side's (every CPU's busy time in /proc/stat less the load
#   generator's: PostgreSQL alone for pgbench, ringport plus PostgreSQL for the others), in µs per
#   request. The load generators do not cost the same: on 2 cores the cheaper one leaves more CPU
#   to the server, so the server-side figure is the fair one to compare.
#   Then redis-benchmark SET/GET at -c 16 on the embedded store and against an in-memory
#   redis-server (what the load generator allows on this box), for reference,
#   and a SQL-defined command reading the same row as GET (`[[command]]`, reply "value"), side by
#   side with the built-in GET at -c 16: what the generic path costs against the hand-written one.
# Usage: bench/store-compare.sh [REQUESTS] [SECONDS]   (defaults 200000, 10; ROUNDS=3)
# Extra serve flags: RINGPORT_FLAGS="--store-threads 8" bench/store-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
seconds=${2:-10}
ci/ensure-postgres >/dev/null
command -v redis-benchmark >/dev/null || apt-get install -y -qq redis-tools >/dev/null
command -v jq >/dev/null || apt-get install -y -qq jq >/dev/null
cargo build --release -q -p ringport -p ringport-bench
work=$(mktemp -d /tmp/ringport-store-compare.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pg_stop
  rm -rf "$work"
}
trap cleanup EXIT
. bench/throwaway-pg.sh 5499
pgbench() { as_pg "$bindir/pgbench" -h "$work/sock" -p 5499 -U postgres "$@" postgres 2>/dev/null; }
tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1 | cut -d. -f1; }
# Before each measured phase: vacuum and flush what the previous one wrote. Without the
# checkpoint, one landed in the middle of the next phase (a GET run's p99 went from 2 ms to 7 ms).
# The vacuum puts both sides on the same footing: pgbench -S reads a table that `pgbench -i` has
# just vacuumed, ringport's GETs would otherwise read pages full of the dead row versions the SET
# phase left (autovacuum keeps them pruned in a running system).
checkpoint() {
  as_pg "$bindir/psql" -h "$work/sock" -p 5499 -U postgres -q -c VACUUM -c CHECKPOINT postgres >/dev/null
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

start_ringport() {
  local name=$1 port=$2; shift 2
  echo secret | target/release/ringport user add bench "$@" >/dev/null
  # shellcheck disable=SC2086
  target/release/ringport serve --listen 127.0.0.1:$port --log-level warn "$@" ${serve_only:-} ${RINGPORT_FLAGS:-} >"$work/$name.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "$work/$name.out" && break; sleep 0.1; done
}
# requests/s of one redis-benchmark test; a 4th argument: that many load threads
rb() {
  local port=$1 test=$2 clients=$3 threads=()
  [ -n "${4:-}" ] && threads=(--threads "$4")
  # Bounded: redis-benchmark retries a refused connection for ever.
  timeout 300 redis-benchmark -h 127.0.0.1 -p "$port" --user bench -a secret -t "$test" -c "$clients" "${threads[@]}" -n "$n" -r 100000 -q 2>/dev/null |
    tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1 | cut -d. -f1
}
# "rate p50 p99" (requests/s, µs) of a ringport-bench closed-loop run
bench() {
  local port=$1 mix=$2 clients=$3
  timeout $((seconds + 120)) target/release/ringport-bench -t "bench:secret@127.0.0.1:$port" --mix "$mix" -c "$clients" \
    --threads 2 -d "${seconds}s" --warmup 1s --keyspace 100000 --value-size 3 --json "$work/bench.json" >/dev/null 2>&1
  jq -r '.targets[0] | "\(.throughput_rps|floor) \(.latency_us.p50|floor) \(.latency_us.p99|floor)"' "$work/bench.json"
}
# busy jiffies of every CPU so far (user, nice, system, irq, softirq)
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# Runs a load command and prints its stdout; leaves in $work/cpu "LOAD SERVER WALL": the load
# command's own CPU seconds (its children's times), every other busy CPU second, and the wall
# seconds of the run.
measured() {
  local b0 b1 t0 t1 load
  b0=$(busy); t0=$(date +%s.%N)
  ( "$@" >"$work/load.out"; times >"$work/times" )
  b1=$(busy); t1=$(date +%s.%N)
  load=$(sed -n 2p "$work/times" | awk '{ for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); t += p[1] * 60 + p[2] } } END { print t }')
  echo "$load $(awk -v b=$((b1 - b0)) -v hz="$(getconf CLK_TCK)" -v l="$load" 'BEGIN { print b / hz - l }') $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" >"$work/cpu"
  cat "$work/load.out"
}
# "LOAD_US SERVER_US" per request of the last measured run at RATE requests/s
per_request() {
  awk -v r="$1" '{ printf "%.1f %.1f\n", $1 / $3 / r * 1e6, $2 / $3 / r * 1e6 }' "$work/cpu"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

echo "machine: $(nproc) cores, kernel $(uname -r), PostgreSQL $("$bindir/postgres" --version | awk '{print $3}'), $(date -u +%F); ringport ${RINGPORT_FLAGS:-(default flags)}"
# The SQL-defined twin of GET: the same row of the same table, one statement per command.
cat >"$work/sql.toml" <<'TOML'
[[command]]
name = "sqlget"
sql = "SELECT value FROM ringport_kv WHERE owner = $1 AND key = $2"
arity = 2
reply = "value"
TOML
# ringport first: it creates its schema (`ringport user add` does, before the server checks the
# SQL command against it), which the upsert script writes to.
serve_only="--config $work/sql.toml" start_ringport postgres 16395 --store "$url" --data "$work/unused"
pgbench -i -s 10 -q >/dev/null 2>&1
cat >"$work/upsert.sql" <<'SQL'
\set k random(0, 99999)
INSERT INTO ringport_kv (owner, key, value) VALUES ('pgbench', convert_to('key:' || :k, 'UTF8'), '\x787878') ON CONFLICT (owner, key) DO UPDATE SET value = EXCLUDED.value;
SQL
# The host is noisy (one load's figure moves by a quarter between runs), so each ceiling and its
# ringport twin run back to back, ROUNDS times, and the medians are compared.
rounds=${ROUNDS:-3}
# The reads at -c 16 run under `measured`, and keep their per_request "load_us server_us".
for round in $(seq "$rounds"); do
  checkpoint; upsert16+=" $(pgbench -f "$work/upsert.sql" -M prepared -c 16 -j 2 -T "$seconds" | tps)"
  checkpoint; set16+=" $(rb 16395 set 16)"
  checkpoint; read -r r p50 p99 < <(bench 16395 SET 16); bset16+=" $r"; bset16_p50+=" $p50"; bset16_p99+=" $p99"
  checkpoint; r=$(measured pgbench -S -M prepared -c 16 -j 2 -T "$seconds" | tps); read16+=" $r"
  read -r l v < <(per_request "$r"); read16_load+=" $l"; read16_server+=" $v"
  checkpoint; r=$(measured rb 16395 get 16); get16+=" $r"
  read -r l v < <(per_request "$r"); get16_load+=" $l"; get16_server+=" $v"
  checkpoint; get16t2+=" $(rb 16395 get 16 2)"
  checkpoint; measured bench 16395 GET 16 >"$work/b"; read -r r p50 p99 <"$work/b"; bget16+=" $r"; bget16_p50+=" $p50"; bget16_p99+=" $p99"
  read -r l v < <(per_request "$r"); bget16_load+=" $l"; bget16_server+=" $v"
  checkpoint; read200+=" $(pgbench -S -M prepared -c 200 -j 2 -T "$seconds" | tps)"
  checkpoint; get200+=" $(rb 16395 get 200)"
  checkpoint; read -r r p50 p99 < <(bench 16395 GET 200); bget200+=" $r"; bget200_p50+=" $p50"; bget200_p99+=" $p99"
  echo "round $round: GET -c 16 $(ratio "${get16##* }" "${read16##* }") (--threads 2: $(ratio "${get16t2##* }" "${read16##* }"); ringport-bench: $(ratio "${bget16##* }" "${read16##* }")), -c 200 $(ratio "${get200##* }" "${read200##* }") (ringport-bench: $(ratio "${bget200##* }" "${read200##* }")), SET $(ratio "${set16##* }" "${upsert16##* }") (ringport-bench: $(ratio "${bset16##* }" "${upsert16##* }")); server CPU per read at -c 16: pgbench -S ${read16_server##* } µs, redis-benchmark GET ${get16_server##* } µs, ringport-bench GET ${bget16_server##* } µs"
done
for v in upsert16 set16 bset16 bset16_p50 bset16_p99 read16 read16_load read16_server get16 get16_load get16_server get16t2 \
  bget16 bget16_p50 bget16_p99 bget16_load bget16_server read200 get200 bget200 bget200_p50 bget200_p99; do
  printf -v "$v" '%s' "$(median <<<"${!v}")"
done
checkpoint
sqlget16=$(redis-benchmark -h 127.0.0.1 -p 16395 --user bench -a secret -c 16 -n "$n" -r 100000 -q sqlget key:__rand_int__ 2>/dev/null |
  tr '\r' '\n' | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1 | cut -d. -f1)

row() { printf '%-44s %10s %11s %7s %8s %8s %10s %10s\n' "$@"; }
echo
row "load" "ceiling/s" "ringport/s" "ratio" "p50 µs" "p99 µs" "load µs/r" "server µs/r"
row "pgbench -S, -c 16 (the ceiling itself)" "$read16" "" "" "" "" "$read16_load" "$read16_server"
row "GET, redis-benchmark -c 16" "$read16" "$get16" "$(ratio "$get16" "$read16")" "" "" "$get16_load" "$get16_server"
row "  the same, --threads 2" "$read16" "$get16t2" "$(ratio "$get16t2" "$read16")" "" "" "" ""
row "GET, ringport-bench -c 16" "$read16" "$bget16" "$(ratio "$bget16" "$read16")" "$bget16_p50" "$bget16_p99" "$bget16_load" "$bget16_server"
row "GET vs pgbench -S -c 200, redis-benchmark" "$read200" "$get200" "$(ratio "$get200" "$read200")" "" "" "" ""
row "GET vs pgbench -S -c 200, ringport-bench" "$read200" "$bget200" "$(ratio "$bget200" "$read200")" "$bget200_p50" "$bget200_p99" "" ""
row "SET vs pgbench upsert -c 16, redis-benchmark" "$upsert16" "$set16" "$(ratio "$set16" "$upsert16")" "" "" "" ""
row "SET vs pgbench upsert -c 16, ringport-bench" "$upsert16" "$bset16" "$(ratio "$bset16" "$upsert16")" "$bset16_p50" "$bset16_p99" "" ""
echo "(medians of $rounds rounds; redis-benchmark -n $n -r 100000; ringport-bench closed loop --threads 2, ${seconds} s; ceilings: pgbench -M prepared -j 2 -T $seconds;"
echo " load/server µs/r: CPU per request of the load generator and of everything else on the box, from /proc/stat)"
echo
echo "SQL-defined read of the same row (sqlget key) vs built-in GET, redis-benchmark -c 16: $sqlget16/s vs $get16/s ($(ratio "$sqlget16" "$get16"))"

start_ringport embedded 16396 --data "$work/embedded"
echo
echo "ringport on the embedded store, redis-benchmark -c 16 -n $n: SET $(rb 16396 set 16)/s, GET $(rb 16396 get 16)/s (--threads 2: $(rb 16396 get 16 2)/s)"
# What the load generator itself allows on this box: the same redis-benchmark against an
# in-memory redis-server, which does the least work per GET of any server.
if command -v redis-server >/dev/null; then
  redis-server --port 16397 --bind 127.0.0.1 --save '' --appendonly no --user bench on '>secret' '~*' '&*' '+@all' >"$work/redis.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p 16397 --user bench --pass secret --no-auth-warning PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  echo "the load generator's ceiling, redis-benchmark -c 16 against redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2): SET $(rb 16397 set 16)/s, GET $(rb 16397 get 16)/s (--threads 2: $(rb 16397 get 16 2)/s)"
fi
grep -E "^store_(batches|batched_jobs|batch_max|ring_batches|ring_gets)" <(redis-cli -p 16395 --user bench --pass secret --no-auth-warning INFO store 2>/dev/null | tr -d '\r') |
  paste -sd' ' | sed 's/^/ringport on PostgreSQL, INFO store: /' || true
