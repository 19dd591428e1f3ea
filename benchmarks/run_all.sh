#!/usr/bin/env bash
# Rerun every benchmark of pad and append one line per benchmark to bench-out/results.txt.
#
#   bash benchmarks/run_all.sh           # small sizes (each benchmark's --quick): under 15 min on 2 cores
#   bash benchmarks/run_all.sh --full    # the full sizes of BENCHMARKS.md (much longer)
#   make bench                           # the same as the first line, after set-up
#
# Each line of bench-out/results.txt:
#   <UTC date> | host=<name> nproc=<n> cpu="<model>" gpu="<name or none>" | mode=<quick|full> |
#   bench=<name> exit=<code> seconds=<wall> | <the benchmark's own key=value line>
# The full output of each benchmark (stderr included) is in bench-out/<name>.log.
# Environment: PY (python, default .venv/bin/python), BENCH_TIMEOUT (seconds per benchmark,
# default 300 quick / 7200 full), BENCHES (a space-separated subset of: render_bench extract_bench
# train_bench score_bench metrics_bench calibration_bench cache_bench fuzz_readers demo_bench serve_bench
# remote_read_bench cluster_bench).
set -u
cd "$(dirname "$0")/.."

MODE=quick
for arg in "$@"; do
    case "$arg" in
        --full) MODE=full ;;
        --quick) MODE=quick ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown option $arg (use --full or --quick)" >&2; exit 2 ;;
    esac
done

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}
if [ "$MODE" = quick ]; then FLAG=--quick; TIMEOUT=${BENCH_TIMEOUT:-300}; else FLAG=; TIMEOUT=${BENCH_TIMEOUT:-7200}; fi
BENCHES=${BENCHES:-"render_bench extract_bench train_bench score_bench metrics_bench calibration_bench cache_bench fuzz_readers demo_bench serve_bench remote_read_bench cluster_bench"}

OUT=bench-out
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
NPROC=$(nproc 2>/dev/null || echo "?")
CPU=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//; s/"/'"'"'/g')
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
MACHINE="host=$(hostname) nproc=$NPROC cpu=\"${CPU:-unknown}\" gpu=\"${GPU:-none}\""

echo "pad benchmarks ($MODE) on $MACHINE; results appended to $RESULTS"
START=$(date +%s)
for name in $BENCHES; do
    script=benchmarks/$name.py
    date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    if [ ! -f "$script" ]; then
        echo "$date_utc | $MACHINE | mode=$MODE | bench=$name exit=missing seconds=0 | (no $script)" >> "$RESULTS"
        echo "  $name: no $script, skipped"
        continue
    fi
    echo "  $name ..."
    t0=$(date +%s)
    timeout "$TIMEOUT" "$PY" "$script" $FLAG > "$OUT/$name.out" 2> "$OUT/$name.log"
    code=$?
    t1=$(date +%s)
    cat "$OUT/$name.out" >> "$OUT/$name.log"
    line=$(grep -v '^[[:space:]]*$' "$OUT/$name.out" | tail -n 1)
    [ "$code" = 124 ] && line="(timed out after ${TIMEOUT} s) $line"
    [ -n "$line" ] || line="(no output; see $OUT/$name.log)"
    echo "$date_utc | $MACHINE | mode=$MODE | bench=$name exit=$code seconds=$((t1 - t0)) | $line" >> "$RESULTS"
    echo "  $name: exit $code in $((t1 - t0)) s: $line"
done
echo "pad benchmarks: done in $(( $(date +%s) - START )) s; see $RESULTS"
