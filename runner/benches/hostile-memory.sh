#!/usr/bin/env bash
# A runner binary under memory-hungry guests, for before/after comparisons of any build (no
# flag it lacks is needed): two `runner run` processes (--concurrency 100 --memory 128MiB, plus
# any extra flags given), 1,000 healthy jobs (50 ms sleeps, a 16 MiB manifest) timed alone,
# then 100 hostile ones (a 96 MiB log line, a 24 MiB result, filling memory to the cap) and
# 1,000 healthy ones again; prints each runner's peak RSS (VmHWM), the healthy slowdown, and
# how the hostile jobs ended.
#   runner/benches/hostile-memory.sh target/release/runner [--memory-budget 1GiB]
# Needs the example plugins (example-plugins/build) and DATABASE_URL's server, or the local one.
set -euo pipefail
bin=$(realpath "$1"); shift
plugins="$(cd "$(dirname "$0")/../.." && pwd)/target/plugins"
base="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db=hostile_memory_$$
url="${base%/*}/$db"
dir=$(mktemp -d)
pids=()
cleanup() {
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
    psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
psql "$base" -qc "CREATE DATABASE $db"
cp "$plugins/sleep.wasm" "$plugins/poison.wasm" "$dir/"
echo 'memory = "16MiB"' > "$dir/sleep.toml"
DATABASE_URL=$url "$bin" migrate >/dev/null
for _ in 1 2; do
    DATABASE_URL=$url RUST_LOG=warn "$bin" run --plugins "$dir" --concurrency 100 \
        --memory 128MiB "$@" >/dev/null 2>&1 &
    pids+=($!)
done
q() { psql "$url" -qAtc "$1"; }
until [ "$(q "SELECT count(*) FROM jobrunner.runners")" = 2 ]; do sleep 0.1; done
healthy() {
    local started; started=$(date +%s.%N)
    q "SELECT count(jobrunner.enqueue('sleep', jsonb_build_object('ms', 50, 'run', '$1', 'i', g),
                                      tenant => 'good', deduplicate => false))
         FROM generate_series(1, 1000) AS g" >/dev/null
    until [ "$(q "SELECT count(*) FROM jobrunner.jobs
                   WHERE tenant = 'good' AND state IN ('available', 'running')")" = 0 ]; do
        sleep 0.05
    done
    awk -v end="$(date +%s.%N)" -v start="$started" 'BEGIN { printf "%.2f", end - start }'
}
alone=$(healthy alone)
q "SELECT count(jobrunner.enqueue('poison', CASE g % 3
          WHEN 0 THEN jsonb_build_object('do', 'huge-log', 'bytes', 96 * 1048576, 'n', g)
          WHEN 1 THEN jsonb_build_object('do', 'huge-output', 'bytes', 24 * 1048576, 'n', g)
          ELSE jsonb_build_object('do', 'memory', 'n', g) END,
        tenant => 'evil', max_attempts => 1, deduplicate => false))
     FROM generate_series(0, 99) AS g" >/dev/null
beside=$(healthy beside)
until [ "$(q "SELECT count(*) FROM jobrunner.jobs
               WHERE tenant = 'evil' AND state IN ('available', 'running')")" = 0 ]; do
    sleep 0.1
done
for pid in "${pids[@]}"; do
    echo "runner $pid peak RSS: $(awk '/VmHWM/ {printf "%d MiB", $2 / 1024}' /proc/$pid/status)"
done
ratio=$(awk -v a="$alone" -v b="$beside" 'BEGIN { printf "%.2f", b / a }')
echo "1000 healthy jobs: $alone s alone, $beside s beside 100 hostile ones (${ratio}x)"
q "SELECT state, left(errors -> -1 ->> 'error', 50) AS ending, count(*), max(attempt)
     FROM jobrunner.jobs WHERE tenant = 'evil' GROUP BY 1, 2 ORDER BY 2"
