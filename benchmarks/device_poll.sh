#!/usr/bin/env bash
# Follow a build started by device_build.sh for at most SECONDS, and return early when it ends
# (success or error), so a device call never sleeps past a failure. Copies what the next
# session needs to judge the run into $OUT: build.out, the run's logs and the build tree's
# .ninja_log.
# Usage: benchmarks/device_poll.sh WORK [SECONDS]
set -uo pipefail
WORK=${1:?usage: device_poll.sh WORK [SECONDS]}
LIMIT=${2:-540}
OUT=${OUT:-$WORK/poll}
mkdir -p "$OUT/logs"
for ((waited = 0; waited < LIMIT; waited += 10)); do
  # The timing table ends every run, finished or failed.
  grep -q "^logs: " "$WORK/build.out" 2>/dev/null && break
  sleep 10
done
cp "$WORK/build.out" "$OUT/" 2>/dev/null
for f in "$WORK"/logs/latest/*; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 20000000 ] && cp "$f" "$OUT/logs/"
done
for log in "$WORK"/work/src/build/temp.*/.ninja_log; do [ -f "$log" ] && cp "$log" "$OUT/ninja_log.txt"; done
ls -la "$WORK"/work/dist 2>/dev/null
tail -c 2500 "$WORK/build.out"
