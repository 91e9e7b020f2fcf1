#!/usr/bin/env bash
# Two server settings in turn, on one bundle under one load: an A/B where the machine's drift
# (this kind of machine runs 10-20% slower in some hours) hits both sides alike.
#
#   bench/ab.sh BUNDLE "FLAGS A" "FLAGS B" -- LOADTEST RUN FLAGS
#   e.g. bench/ab.sh artifacts/bundle "--engine-process" "--no-engine-process" -- \
#            --concurrency 32 --duration 15 --warmup-s 2 --requests 100000 --task t2i_prompt \
#            --length 20 --max-new-tokens 48 --temperature 0.8 --seed 1
#
# Each round starts a fresh `python -m server serve --variant int8 --max-batch-size 32
# --max-queue 256 FLAGS`, warms it with 6 s of a closed loop of 32, prints the load average,
# runs `python -m loadtest run` with the given flags, and stops it; A then B, ROUNDS times
# (default 2). Reports and server logs go under $OUT (default artifacts/bench_ab).
# A_DIR / B_DIR (default: here) run each side's server from another checkout, for a commit
# against another: `git worktree add /tmp/before <commit>`, then
#   A_DIR=/tmp/before bench/ab.sh artifacts/bundle "" "" -- <loadtest run flags>
# (the bundle path is taken from here; PY must be an absolute path or on PATH).
# Run it on an otherwise idle machine: two busy processes on two cores slow each other.
set -euo pipefail
BUNDLE=$(realpath "$1")
A=$2
B=$3
shift 3
[[ "${1:-}" == "--" ]] && shift
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-8019}
OUT=${OUT:-artifacts/bench_ab}
PY=${PY:-python}
mkdir -p "$OUT"
URL="http://127.0.0.1:$PORT"

for round in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        flags=$A
        dir=${A_DIR:-.}
        [[ $side == B ]] && flags=$B && dir=${B_DIR:-.}
        # shellcheck disable=SC2086  # the flags are words
        (cd "$dir" && exec $PY -m server serve --bundle "$BUNDLE" --port "$PORT" --variant int8 \
            --max-batch-size 32 --max-queue 256 $flags) >"$OUT/server-$side-$round.log" 2>&1 &
        pid=$!
        until curl -sf "$URL/readyz" >/dev/null; do
            kill -0 "$pid" 2>/dev/null || { echo "server $side died, see $OUT/server-$side-$round.log" >&2; exit 1; }
            sleep 0.2
        done
        $PY -m loadtest run --url "$URL" --quiet --concurrency 32 --duration 6 --requests 100000 \
            --task t2i_prompt --length 20 --max-new-tokens 48 --seed 1 >/dev/null
        echo "== round $round, $side ($flags), load average $(cut -d' ' -f1-3 /proc/loadavg)"
        $PY -m loadtest run --url "$URL" --quiet "$@" --json "$OUT/$side-$round.json"
        kill -TERM "$pid"
        wait "$pid" || true
    done
done
