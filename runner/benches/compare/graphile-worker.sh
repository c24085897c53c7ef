#!/usr/bin/env bash
# Graphile Worker's drain on this machine, for a same-day comparison with `runner bench`:
# N no-op jobs (200,000) enqueued with one SQL add_jobs call, the table ANALYZEd, then drained
# by P processes (2) x 24 with batching on (local queue of 500, completions batched). The drain
# is timed from the first job started to the last one completed, as the workers report them,
# so node's start-up does not count. Both systems log one line per job.
#   runner/benches/compare/graphile-worker.sh        (DATABASE_URL's server, or the local one)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
N=${N:-200000}; P=${P:-2}
base="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
db=gw_bench_$$
url="${base%/*}/$db"
work="$here/../../../target/compare/graphile-worker"
mkdir -p "$work"
cp "$here/graphile-worker.js" "$work/worker.js"
cd "$work"
[ -d node_modules/graphile-worker ] || npm install --silent --no-save graphile-worker@0.17.3 >/dev/null
psql "$base" -qc "CREATE DATABASE $db"
trap 'psql "$base" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
npx graphile-worker -c "$url" --schema-only >/dev/null 2>&1
t0=$(date +%s.%N)
psql "$url" -qc "SELECT count(*) FROM graphile_worker.add_jobs((SELECT array_agg(row('echo',
    '{}'::json, null, null, null, null, null, null)::graphile_worker.job_spec)
    FROM generate_series(1, $N)))" >/dev/null
t1=$(date +%s.%N)
psql "$url" -qc "ANALYZE graphile_worker._private_jobs"
echo "enqueue: $(python3 -c "print(round($N / ($t1 - $t0)))") jobs/s"
out=$(mktemp -d)
pids=()
for i in $(seq "$P"); do GW_URL="$url" node worker.js >"$out/$i" 2>/dev/null & pids+=($!); done
while psql "$url" -qAtc "SELECT EXISTS (SELECT FROM graphile_worker._private_jobs)" | grep -q t; do
    sleep 0.2
done
kill -TERM "${pids[@]}"
wait "${pids[@]}" 2>/dev/null || true
python3 - "$out" <<'PY'
import json, os, sys
runs = [json.loads([l for l in open(os.path.join(sys.argv[1], f)) if l.startswith("STATS ")][-1][6:])
        for f in os.listdir(sys.argv[1])]
first = min(r["first"] for r in runs if r["first"])
last = max(r["last"] for r in runs if r["last"])
done = sum(r["done"] for r in runs)
print(f"drain: {round(done / ((last - first) / 1000))} jobs/s ({done} jobs)")
PY
rm -rf "$out"
