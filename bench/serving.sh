#!/usr/bin/env bash
# Serving benchmark: continuous batching vs batching off (one sequence at a time), on the
# same bundle, one server at a time, driven by the load-test CLI at saturation.
#
#   bench/serving.sh [BUNDLE] [REQUESTS] [CONCURRENCY...]
#
# Several concurrencies ("1 16 32") run one after another against the same server.
# MODES=continuous skips the batching-off server (e.g. for a concurrency sweep).
# Writes each run's JSON report and server log under $OUT (default artifacts/bench_serving).
# Run it on an otherwise idle machine: two busy processes on two cores slow each other.
set -euo pipefail
BUNDLE=${1:-artifacts/bundle}
REQUESTS=${2:-256}
CONCURRENCY=${3:-32}
MODES=${MODES:-continuous off}
PORT=${PORT:-8017}
OUT=${OUT:-artifacts/bench_serving}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48}
PY=${PY:-python}
mkdir -p "$OUT"

run() {
    local name=$1
    shift
    $PY -m server serve --bundle "$BUNDLE" --port "$PORT" "$@" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "server for $name died, see $OUT/$name.log" >&2; exit 1; }
        sleep 0.2
    done
    for c in $CONCURRENCY; do
        echo "== $name, concurrency $c: $*"
        $PY -m loadtest run --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" --concurrency "$c" \
            --max-new-tokens "$MAX_NEW_TOKENS" --json "$OUT/$name-c$c.json" --quiet
    done
    kill -TERM "$pid"
    wait "$pid"
}

[[ " $MODES " == *" continuous "* ]] && run continuous --max-batch-size 32 --max-queue 256
[[ " $MODES " == *" off "* ]] && run off --max-batch-size 1 --max-queue 256
exit 0
