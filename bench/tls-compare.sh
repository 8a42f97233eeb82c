#!/usr/bin/env bash
# TLS figures side by side in one run, ringport against redis-server (Debian's, built with TLS),
# each serving a plain and a TLS port at once:
#   1. server CPU µs, syscalls and io_uring_enter calls per PING (redis-benchmark ping_mbulk,
#      -c 50, -P 1; --tls for the TLS ports), through ../shared/tools/server-cost;
#   2. RSS per idle authenticated session, plain and TLS, by the slope method: the server's RSS
#      with LOW and with HIGH idle sessions open, (RSS_HIGH - RSS_LOW) / (HIGH - LOW), so fixed
#      costs do not count. The sessions are held by Python processes (ssl module for TLS) spread
#      over 127.0.0.x source addresses, LOW in one process and HIGH - LOW in another.
# Usage: bench/tls-compare.sh [REQUESTS] [LOW] [HIGH]     (defaults 200000, 6000, 18000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
low=${2:-6000}
high=${3:-18000}
command -v redis-server >/dev/null || { echo "installing redis-server"; apt-get install -y -qq redis-server redis-tools >/dev/null; }
cost=../shared/tools/server-cost
[ -x "$cost" ] || { echo "needs $cost (perf)"; exit 1; }
cargo build --release -q -p ringport
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

echo secret | target/release/ringport user add bench --data "$work/data" >/dev/null
target/release/ringport serve --listen 127.0.0.1:16470 --tls-listen 127.0.0.1:16471 \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --data "$work/data" --log-level warn \
  ${RINGPORT_FLAGS:-} >"$work/ringport.out" 2>&1 &
pids+=($!); ringport_pid=$!
redis-server --port 16472 --tls-port 16473 --bind 127.0.0.1 --tls-cert-file "$work/cert.pem" \
  --tls-key-file "$work/key.pem" --tls-ca-cert-file "$work/cert.pem" --tls-auth-clients no \
  --save '' --appendonly no --requirepass secret --maxclients 50000 --daemonize no >"$work/redis.out" 2>&1 &
pids+=($!); redis_pid=$!
for _ in $(seq 50); do
  grep -q "listening" "$work/ringport.out" 2>/dev/null && redis-cli -p 16472 -a secret --no-auth-warning ping >/dev/null 2>&1 && break
  sleep 0.2
done

echo "machine: $(nproc) cores, kernel $(uname -r), $(date -u +%F); $(redis-server --version | cut -d' ' -f1-3)"
echo
echo "PING (redis-benchmark ping_mbulk -c 50 -n $n), server cost per request:"
for transport in plain tls; do
  for target in ringport redis; do
    case $target/$transport in
      ringport/plain) port=16470 pid=$ringport_pid auth=(--user bench -a secret) tls=() ;;
      ringport/tls) port=16471 pid=$ringport_pid auth=(--user bench -a secret) tls=(--tls --cacert "$work/cert.pem") ;;
      redis/plain) port=16472 pid=$redis_pid auth=(-a secret) tls=() ;;
      redis/tls) port=16473 pid=$redis_pid auth=(-a secret) tls=(--tls --cacert "$work/cert.pem") ;;
    esac
    printf '%-8s %-5s ' $target $transport
    "$cost" "$pid" "$n" -- redis-benchmark -h 127.0.0.1 -p $port "${auth[@]}" "${tls[@]}" \
      -t ping_mbulk -c 50 -n "$n" -q 2>/dev/null | tr '\n' ' ' | sed 's/  */ /g'
    echo
  done
done

cat >"$work/hold.py" <<'PY'
# Holds COUNT authenticated sessions open (TLS when asked) until killed; writes how many
# authenticated to OUT once all are open.
import resource, socket, ssl, sys, time
port, user, count, use_tls, ca, out, first_source = sys.argv[1:8]
port, count, first_source = int(port), int(count), int(first_source)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
context = ssl.create_default_context(cafile=ca) if use_tls == "tls" else None
auth = (f"AUTH {user} secret\r\n" if user != "-" else "AUTH secret\r\n").encode()
socks = []
for i in range(count):
    raw = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{first_source + i % 8}", 0))
    s = context.wrap_socket(raw, server_hostname="localhost") if context else raw
    s.sendall(auth)
    socks.append(s)
ok = 0
for s in socks:
    s.settimeout(30)
    if s.recv(16).startswith(b"+OK"):
        ok += 1
open(out, "w").write(f"{ok}\n")
time.sleep(900)
PY
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Starts a holder of COUNT sessions; waits until they are all open.
hold() { # port user count transport tag first_source
  rm -f "$work/$5.ok"
  python3 "$work/hold.py" "$1" "$2" "$3" "$4" "$work/cert.pem" "$work/$5.ok" "$6" &
  holders+=($!); pids+=($!)
  for _ in $(seq 1500); do [ -s "$work/$5.ok" ] && break; sleep 0.2; done
  [ "$(cat "$work/$5.ok" 2>/dev/null || echo 0)" = "$3" ] || echo "(only $(cat "$work/$5.ok" 2>/dev/null || echo 0) of $3 authenticated)"
  sleep 2
}
echo
echo "RSS per idle authenticated session, slope between $low and $high sessions:"
printf '%-8s %-5s %12s %12s %12s\n' server port "RSS@$low kB" "RSS@$high kB" "bytes/session"
for transport in plain tls; do
  for target in ringport redis; do
    case $target/$transport in
      ringport/plain) port=16470 pid=$ringport_pid user=bench ;;
      ringport/tls) port=16471 pid=$ringport_pid user=bench ;;
      redis/plain) port=16472 pid=$redis_pid user=- ;;
      redis/tls) port=16473 pid=$redis_pid user=- ;;
    esac
    holders=()
    hold $port $user "$low" $transport a 1
    r_low=$(rss_kb "$pid")
    hold $port $user $((high - low)) $transport b 11
    r_high=$(rss_kb "$pid")
    kill "${holders[@]}" 2>/dev/null || true
    wait "${holders[@]}" 2>/dev/null || true
    printf '%-8s %-5s %12s %12s %12s\n' $target $transport "$r_low" "$r_high" \
      "$(( (r_high - r_low) * 1024 / (high - low) ))"
    sleep 3
  done
done
