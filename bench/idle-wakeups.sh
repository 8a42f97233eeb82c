#!/usr/bin/env bash
# Idle cost: how often an idle server's rings enter the kernel. Starts `ringport serve`, opens N
# idle authenticated sessions, waits for the auth deadlines to pass, then counts io_uring_enter
# per second of the server for SECONDS seconds (perf's syscall tracepoint when perf may trace,
# otherwise the rings' `enters` counters from INFO). A count, not a timing: a busy machine does
# not change it.
#
#   bench/idle-wakeups.sh                 # N=10000, target/release/ringport
#   N=20000 RINGS=2 BIN=/tmp/old/ringport bench/idle-wakeups.sh
#   SERVE_ARGS= bench/idle-wakeups.sh     # no idle timeout: the wheel empties after AUTH's deadline
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10000}
SECONDS_COUNTED=${SECONDS_COUNTED:-10}
RINGS=${RINGS:-2}
BIN=${BIN:-target/release/ringport}
PORT=${PORT:-$((20000 + RANDOM % 20000))}
# With an idle timeout every session keeps an entry in its ring's timer wheel, far ahead.
SERVE_ARGS=${SERVE_ARGS---idle-timeout 600s}
PER_PROCESS=9000 # the per-process descriptor cap here is 20,000

[ -x "$BIN" ] || { echo "idle-wakeups: $BIN missing (cargo build --release -p ringport)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
echo secret | "$BIN" user add bench --data "$work/data" >/dev/null 2>&1
"$BIN" serve --listen "127.0.0.1:$PORT" --data "$work/data" --rings "$RINGS" \
  --max-sessions $((N + 100)) $SERVE_ARGS >"$work/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT)).close()" 2>/dev/null && break
  sleep 0.1
done

# Clients: each process holds up to PER_PROCESS sessions, spread over 127.0.0.x source addresses
# so the ephemeral ports of one address do not run out; prints "ready" once all authenticated.
cat >"$work/client.py" <<'EOF'
import resource, socket, sys, time
port, count, first = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (count + 100, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
socks = []
for i in range(count):
    src = "127.0.0.%d" % (2 + (first + i) // 20000)
    s = socket.create_connection(("127.0.0.1", port), source_address=(src, 0))
    s.sendall(b"AUTH bench secret\r\n")
    socks.append(s)
for s in socks:
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            sys.exit("connection closed while authenticating")
        reply += chunk
    if not reply.startswith(b"+OK"):
        sys.exit("AUTH failed: %r" % reply)
print("ready", flush=True)
time.sleep(3600)
EOF
opened=0
while [ "$opened" -lt "$N" ]; do
  count=$((N - opened < PER_PROCESS ? N - opened : PER_PROCESS))
  mkfifo "$work/ready.$opened"
  python3 "$work/client.py" "$PORT" "$count" "$opened" >"$work/ready.$opened" &
  pids+=("$!")
  read -r line <"$work/ready.$opened"
  [ "$line" = ready ] || { echo "idle-wakeups: a client failed" >&2; exit 1; }
  opened=$((opened + count))
done
# Past every auth deadline (10 s by default): what remains is idle sessions and their entries.
sleep "${SETTLE:-11}"

info_enters() {
  python3 - "$PORT" <<'EOF'
import re, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"AUTH bench secret\r\nINFO\r\n")
s.settimeout(1)
data = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    pass
print(sum(int(m) for m in re.findall(rb"enters=(\d+)", data)))
EOF
}

# Some kernels and containers let perf open syscall tracepoints but never count them: check on a
# syscall that surely happens before trusting a figure of 0.
perf_counts() {
  perf stat -e syscalls:sys_enter_nanosleep -x, -o "$work/perf-check" -- sleep 0.1 >/dev/null 2>&1 &&
    [ "$(grep sys_enter_nanosleep "$work/perf-check" | cut -d, -f1)" -gt 0 ] 2>/dev/null
}
if command -v perf >/dev/null && perf_counts; then
  perf stat -e syscalls:sys_enter_io_uring_enter -p "$server" -x, -o "$work/perf" -- sleep "$SECONDS_COUNTED"
  count=$(grep sys_enter_io_uring_enter "$work/perf" | cut -d, -f1)
  how="perf stat -e syscalls:sys_enter_io_uring_enter"
else
  before=$(info_enters)
  sleep "$SECONDS_COUNTED"
  after=$(info_enters)
  count=$((after - before))
  how="INFO enters (includes the INFO itself)"
fi
echo "idle-wakeups: N=$N sessions, $RINGS rings, $BIN: $count io_uring_enter in ${SECONDS_COUNTED}s" \
  "= $(python3 -c "print(round($count / $SECONDS_COUNTED, 1))")/s ($how)"
