# Sourced by the bench scripts that start and stop one ringport (the release build) over and over
# on the embedded store in $work/data, user bench / password secret, on 127.0.0.1:$port. `port`,
# `work` and `pid` must be set (pid="" while none runs; the script's cleanup stops it). Defines
# `start_server [FLAGS...]` (returns once it listens), `stop_server`, `cli ARGS...` (redis-cli as
# bench, carriage returns stripped) and `rss_kb PID`.
# Usage: . bench/one-server.sh   (from the repository root)
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cli() { redis-cli -p "$port" --user bench --pass secret --no-auth-warning "$@" 2>/dev/null | tr -d '\r'; }
start_server() { # extra flags...
  target/release/ringport serve --listen "127.0.0.1:$port" --data "$work/data" --log-level warn \
    --max-sessions 100000 "$@" >"$work/out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q listening "$work/out" && return 0; sleep 0.1; done
  echo "the server did not start:" >&2; cat "$work/out" >&2; exit 1
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
