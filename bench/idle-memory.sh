#!/usr/bin/env bash
# User-space memory per idle authenticated session, by the slope method: the server's RSS with
# 6,000 idle sessions open, then with 12,000 more (each batch held by ringport-bench --idle in a
# process of its own, spread over 127.0.0.x source addresses), (RSS18k - RSS6k) / 12,000, so
# per-ring and per-process fixed costs do not count. Each reading is taken once the RSS has
# settled. Also the RSS at 0 sessions. For ringport at REV (before), ringport at the working tree
# (after) and redis-server, one after the other in one run; with REV `-`, the working tree and
# redis-server only.
# Usage: bench/idle-memory.sh REV|- [LOW] [HIGH]    (defaults 6000 18000)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/idle-memory.sh REV|- [LOW] [HIGH]}
low=${2:-6000}
high=${3:-18000}
command -v redis-server >/dev/null || apt-get install -y -qq redis-server redis-tools >/dev/null
if [ "$rev" = - ]; then
  work=$(mktemp -d)
  pid=""
  trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
  cargo build --release -q -p ringport
  cp target/release/ringport "$work/after"
  builds=after
else
  . bench/two-builds.sh "$rev"
  builds="before after"
fi
cargo build --release -q -p ringport-bench
bench=target/release/ringport-bench
port=16430
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
clients() { redis-cli -p $port --user bench --pass secret --no-auth-warning INFO clients 2>/dev/null | tr -d '\r' | sed -n 's/^connected_clients://p'; }
# Opens N more idle sessions, held by a ringport-bench process of their own; sets `holder`.
hold() {
  "$bench" -t "bench:secret@127.0.0.1:$port" --idle "$1" -c 1 --rate 10 -d 600s --threads 1 >/dev/null 2>&1 &
  holder=$!
}
wait_clients() { # until at least N clients are connected
  for _ in $(seq 600); do
    [ "$(clients || echo 0)" -ge "$1" ] 2>/dev/null && break
    sleep 0.2
  done
}
# The server's RSS in kB once it has settled: two readings 2 s apart within 0.5%, at most 40 s.
# redis-server gives back each idle client's 16 KiB query buffer only in its cron, 2 s after the
# client's last command, and its allocator returns the pages over the next seconds: a reading
# taken at once caught that half done.
settled_rss() {
  local rss last=0
  for _ in $(seq 20); do
    sleep 2
    rss=$(rss_kb "$1")
    [ $((rss > last ? rss - last : last - rss)) -le $((rss / 200)) ] && break
    last=$rss
  done
  echo "$rss"
}
measure() { # name pid -> one line
  local name=$1 server=$2 first second
  sleep 1
  local r0 rlow rhigh
  r0=$(rss_kb "$server")
  # The high count adds sessions to the low count's, with nothing closed in between: closed
  # sessions' memory, kept by the allocator for reuse, would hide what the new ones cost.
  hold "$low"; first=$holder
  wait_clients "$low"
  rlow=$(settled_rss "$server")
  hold $((high - low)); second=$holder
  wait_clients "$high"
  rhigh=$(settled_rss "$server")
  kill "$first" "$second"; wait "$first" "$second" 2>/dev/null || true
  for _ in $(seq 100); do [ "$(clients || echo 9)" -le 2 ] 2>/dev/null && break; sleep 0.2; done
  printf '%-28s %10s %10s %10s %14s\n' "$name" "$r0" "$rlow" "$rhigh" \
    "$(awk -v a="$rlow" -v b="$rhigh" -v n=$((high - low)) 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')"
}
if [ "$rev" = - ]; then
  echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); ringport = working tree at $(git rev-parse --short HEAD)"
else
  echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); before = $rev ($(git rev-parse --short "$rev")), after = working tree"
fi
printf '%-28s %10s %10s %10s %14s\n' "server" "RSS kB @0" "@$low" "@$high" "B/session"
for build in $builds; do
  rm -rf "$work/data"
  echo secret | "$work/$build" user add bench --data "$work/data" >/dev/null
  "$work/$build" serve --listen 127.0.0.1:$port --data "$work/data" --log-level warn --max-sessions 100000 >"$work/out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/out" && break; sleep 0.1; done
  if [ "$rev" = - ]; then name=ringport; else name="ringport $build"; fi
  measure "$name" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --maxclients $((high + 500)) \
  --user bench on '>secret' '~*' '&*' '+@all' --daemonize no >"$work/redis.out" 2>&1 &
pid=$!
for _ in $(seq 100); do redis-cli -p $port PING >/dev/null 2>&1 && break; sleep 0.1; done
measure "redis-server $(redis-server --version | awk '{print $3}')" "$pid"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
echo "(idle sessions: ringport-bench --idle, authenticated; $low in one holder process, then $((high - low)) more in a second; B/session = RSS slope between $low and $high)"
