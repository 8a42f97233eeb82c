#!/usr/bin/env bash
# The headline run, into one folder, each part alone on the machine, one after the other:
#   bench/compare.sh      PING against redis-server and ringport: closed loop at pipeline 1 and
#                         16, open loop; REPEAT runs of each (tables, charts, per-second
#                         timelines, .hgrm files, JSON for `ringport-bench diff`)
#   bench/isolation.sh    PING and AUTH latency while heavy commands fill the compute pool and
#                         slow calls fill the store pool, per --pool-priority (isolation.txt)
#   bench/idle-memory.sh  RSS at 0, 6,000 and 18,000 idle sessions and the bytes per session,
#                         ringport and redis-server (idle-memory.txt)
# and machine.txt: the machine, the commit and when. The README's headline figures come from here.
# Usage: bench/headline.sh [OUT_DIR]   (default bench/results/<UTC date>/headline)
# Settings: those of the scripts it runs (REPEAT, DURATION, RINGPORT_FLAGS for compare.sh);
# ISOLATION_SECONDS=10 per isolation phase.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results/$(date -u +%F)/headline}
mkdir -p "$out"
{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo ' plus uncommitted changes')"
  echo "started: $(date -u '+%F %T') UTC"
  echo "ringport flags: ${RINGPORT_FLAGS:-(defaults)}"
} >"$out/machine.txt"
echo "== bench/compare.sh"
bench/compare.sh "$out"
echo "== bench/isolation.sh"
bench/isolation.sh "${ISOLATION_SECONDS:-10}" | tee "$out/isolation.txt"
echo "== bench/idle-memory.sh"
bench/idle-memory.sh - | tee "$out/idle-memory.txt"
echo "finished: $(date -u '+%F %T') UTC" >>"$out/machine.txt"
echo "all in $out"
