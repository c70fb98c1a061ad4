#!/usr/bin/env bash
# Follow a build started by device_build.sh for at most SECONDS, and return early when it ends
# (its timing table printed, or its process gone without one), so a device call never sleeps
# past a failure. What the next session needs to judge the run comes back as ONE archive,
# $OUT/run-logs.tgz — a device call returns at most 8 files from $OUT, and a run folder alone
# holds 25: build.out, the run folder (logs/<run-id>/), the build tree's .ninja_log, the
# workdir's state.json, the wheel folder's listing (dist.txt) and poll.txt (what this poll saw).
# A file over 8 MiB keeps only its last 8 MiB (NAME.tail), so the archive stays under the
# 16 MiB a returned file may have. Everything is read from WORK, where device_build.sh staged
# the run, nothing from the checkout the call runs in.
# Usage: benchmarks/device_poll.sh WORK [SECONDS]  (POLL_EVERY: seconds between looks, default 10)
set -uo pipefail
WORK=${1:?usage: device_poll.sh WORK [SECONDS]}
LIMIT=${2:-540}
EVERY=${POLL_EVERY:-10}
OUT=${OUT:-$WORK/poll}
MAX_FILE=$((8 * 1024 * 1024))
mkdir -p "$OUT"

running() {
  # Without build.pid (a build started by an older script) only the timing table says it ended.
  [ ! -f "$WORK/build.pid" ] || kill -0 "$(cat "$WORK/build.pid")" 2>/dev/null
}
ended() {
  # The timing table ends every run, finished or failed.
  grep -q "^logs: " "$WORK/build.out" 2>/dev/null
}
waited=0
while ((waited < LIMIT)) && ! ended && running; do
  sleep "$EVERY"
  waited=$((waited + EVERY))
done
if ended; then state="ended (timing table printed)"; elif running; then state="running"; else state="ended without a timing table"; fi

BUNDLE=$(mktemp -d)
trap 'rm -rf "$BUNDLE"' EXIT
cp "$WORK/build.out" "$BUNDLE/" 2>/dev/null
if run=$(readlink -f "$WORK/logs/latest") && [ -d "$run" ]; then
  mkdir -p "$BUNDLE/logs" && cp -a "$run" "$BUNDLE/logs/"
fi
n=0
for log in "$WORK"/work/src/build/temp.*/.ninja_log; do
  [ -f "$log" ] || continue
  n=$((n + 1))
  cp "$log" "$BUNDLE/ninja_log$([ "$n" -gt 1 ] && echo ".$n")"
done
cp "$WORK/work/state.json" "$BUNDLE/" 2>/dev/null
ls -la "$WORK/work/dist" > "$BUNDLE/dist.txt" 2>&1
while IFS= read -r -d '' big; do
  tail -c "$MAX_FILE" "$big" > "$big.tail" && rm -f "$big"
done < <(find "$BUNDLE" -type f -size +"$MAX_FILE"c -print0)
printf 'waited %ss of %ss; build %s\n' "$waited" "$LIMIT" "$state" > "$BUNDLE/poll.txt"
tar -czf "$OUT/run-logs.tgz" -C "$BUNDLE" .

echo "build $state after ${waited}s; $OUT/run-logs.tgz: $(find "$BUNDLE" -type f | wc -l) files, $(du -h "$OUT/run-logs.tgz" | cut -f1)"
cat "$BUNDLE/dist.txt"
tail -c 2500 "$WORK/build.out" 2>/dev/null
