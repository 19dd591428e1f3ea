#!/usr/bin/env bash
# The whole pad pipeline on a CUDA GPU, in one go, with one line of figures.
#
#   bash benchmarks/gpu_check.sh [WORKDIR]     # default: a fresh temporary directory, removed at the end
#
# On a machine with a CUDA device torch can use:
#   1. pad synth: a small procedural dataset (GPU_CHECK_CLASSES classes x GPU_CHECK_PER_CLASS samples per
#      split, GPU_CHECK_POINTS points per cloud);
#   2. pad render --backend egl (EGL rendering on the GPU);
#   3. pad extract-features with ViT-L-14-336, random weights, in fp16 (cache A) and fp32 (cache B, a copy
#      of A's render store: both stores have the same feature tag);
#   4. pad train: one epoch on the first class, from the fp32 features;
#   5. pad score of the other classes from the fp16 and from the fp32 features with that checkpoint;
#   6. pad predict of one PLY file;
#   7. pad serve: the service started once and the same file sent to it (benchmarks/serve_bench.py --check);
#   8. --style pointad on this backend: tests/test_pointad_fixture.py (renderings of the official scripts).
# Every command runs with --device auto; nothing names the CPU. Printed, one line:
#   render_s_per_sample (wall time of pad render, one worker per core, over the samples), extract_fp16_images_s, extract_fp32_images_s, train_s_per_step, peak_gpu_mb
#   (nvidia-smi, sampled every 200 ms), scores_max_diff (fp16 vs fp32 object scores),
#   fp16_fp32_agree (yes when that difference is <= 1e-2), and serve_startup_s, serve_warm_s (one warm
#   POST /predict) and serve_diff (its scores against pad predict's; the step fails above 1e-5), and
#   pointad_fixture (N_passed: the fixture's tests on this backend; the step fails otherwise).
# Exit status: 0 when every step ran and the scores agree; 1 otherwise (the failing step is named on stderr).
# Without CUDA it says so in one line and exits 0.
# Environment: PY (python, default .venv/bin/python), PAD (the pad command, default .venv/bin/pad),
# GPU_CHECK_CLASSES (3), GPU_CHECK_PER_CLASS (6), GPU_CHECK_POINTS (50000); for trying the script
# itself on a machine without a GPU: GPU_CHECK_FORCE=1 (run without CUDA), GPU_CHECK_BACKBONE
# (ViT-L-14-336), GPU_CHECK_BACKEND (egl).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PAD=${PAD:-.venv/bin/pad}
[ -x "$PAD" ] || PAD=pad
CLASSES=${GPU_CHECK_CLASSES:-3}
PER_CLASS=${GPU_CHECK_PER_CLASS:-6}
POINTS=${GPU_CHECK_POINTS:-50000}
BACKBONE=${GPU_CHECK_BACKBONE:-ViT-L-14-336}
BACKEND=${GPU_CHECK_BACKEND:-egl}

if [ "${GPU_CHECK_FORCE:-0}" != 1 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing checked"
    exit 0
fi

if [ $# -ge 1 ]; then WORK=$1; mkdir -p "$WORK"; KEEP=1; else WORK=$(mktemp -d -t pad-gpu-check-XXXXXX); KEEP=0; fi
POLL_PID=
cleanup() {
    [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null
    [ "$KEEP" = 0 ] && rm -rf "$WORK"
}
trap cleanup EXIT
export PYOPENGL_PLATFORM=$BACKEND

fail() { echo "gpu_check: $1 failed (log: $WORK/$2.log)" >&2; tail -n 20 "$WORK/$2.log" >&2; exit 1; }
now() { "$PY" -c 'import time; print(f"{time.monotonic():.3f}")'; }
run() {  # run NAME COMMAND...: its output in WORK/NAME.log; prints nothing; returns its status
    local name=$1; shift
    "$@" > "$WORK/$name.log" 2>&1
}

GPU_MEM=$WORK/gpu_memory.txt
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$GPU_MEM" 2>/dev/null &
    POLL_PID=$!
fi

DATA=$WORK/data
A=$WORK/cache-fp16
B=$WORK/cache-fp32

run synth "$PAD" synth "$DATA" --n-classes "$CLASSES" --per-class "$PER_CLASS" --points "$POINTS" || fail "pad synth" synth
N_SAMPLES=$(find "$DATA" -name '*.ply' | wc -l)
[ "$N_SAMPLES" -gt 0 ] || fail "pad synth (no PLY written)" synth

t0=$(now)
run render "$PAD" render "$DATA" --cache "$A" --backend "$BACKEND" || fail "pad render --backend $BACKEND" render
t1=$(now)
RENDER_S=$("$PY" -c "print(f'{($t1 - $t0) / $N_SAMPLES:.3f}')")
{ mkdir -p "$B" && cp -r "$A/render.zarr" "$B/"; } || fail "copying the render store" render
N_IMAGES=$("$PY" -c "
import sys; sys.path.insert(0, '.')
from data_cache.render_store import RenderStore
s = RenderStore.open('$A'); print(int(s.done().sum()) * len(s.views))") || fail "reading the render store" render

t0=$(now)
run extract16 "$PAD" extract-features --cache "$A" --backbone "$BACKBONE" --pretrained random --precision fp16 \
    --device auto || fail "pad extract-features --precision fp16" extract16
t1=$(now)
run extract32 "$PAD" extract-features --cache "$B" --backbone "$BACKBONE" --pretrained random --precision fp32 \
    --device auto || fail "pad extract-features --precision fp32" extract32
t2=$(now)
IPS16=$("$PY" -c "print(f'{$N_IMAGES / ($t1 - $t0):.2f}')")
IPS32=$("$PY" -c "print(f'{$N_IMAGES / ($t2 - $t1):.2f}')")

TRAIN_CLASS=$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | sort | head -n 1 | xargs basename)
run train "$PAD" train --cache "$B" --train-classes "$TRAIN_CLASS" --out "$WORK/run" --epochs 1 --device auto \
    || fail "pad train" train
STEP_S=$("$PY" -c "
import json, math
rec = [json.loads(l) for l in open('$WORK/run/train_log.jsonl')][-1]
print(f\"{rec['seconds'] / math.ceil(rec['samples'] / 4):.3f}\")") || fail "reading train_log.jsonl" train

run score16 "$PAD" score --cache "$A" --checkpoint "$WORK/run" --out "$WORK/scores-fp16" --device auto \
    || fail "pad score (fp16 features)" score16
run score32 "$PAD" score --cache "$B" --checkpoint "$WORK/run" --out "$WORK/scores-fp32" --device auto \
    || fail "pad score (fp32 features)" score32
DIFF=$("$PY" -c "
import csv
read = lambda p: {r['id']: float(r['score']) for r in csv.DictReader(open(p))}
a, b = read('$WORK/scores-fp16/scores.csv'), read('$WORK/scores-fp32/scores.csv')
assert a and a.keys() == b.keys(), 'the two score runs scored different samples'
print(f'{max(abs(a[k] - b[k]) for k in a):.2e}')") || fail "comparing fp16 and fp32 scores" score32

PLY=$(find "$DATA" -path '*/test/*.ply' | sort | head -n 1)
run predict "$PAD" predict "$PLY" --checkpoint "$WORK/run" --out "$WORK/predictions" --device auto \
    || fail "pad predict" predict
[ -n "$(find "$WORK/predictions" -name '*.json' | head -n 1)" ] || fail "pad predict (no JSON written)" predict
SERVE=$(PAD="$PAD" "$PY" benchmarks/serve_bench.py --check --checkpoint "$WORK/run" --file "$PLY" --reference "$(find "$WORK/predictions" -name '*.json' | head -n 1)" 2> "$WORK/serve.log") || fail "pad serve" serve

# --style pointad on this backend against the official renderings of tests/fixtures/pointad (Open3D):
# pyrender's EGL path draws through a multisampled framebuffer, whose multisampling the point renderer
# turns off; the fixture's test checks images, maps and ground truth to the issue's targets
run pointad "$PY" -m pytest -q -p no:cacheprovider tests/test_pointad_fixture.py || fail "the pointad fixture on $BACKEND" pointad
POINTAD=$(grep -Eo '[0-9]+ passed' "$WORK/pointad.log" | head -n 1 | tr ' ' '_')

PEAK=none
if [ -n "$POLL_PID" ]; then
    kill "$POLL_PID" 2>/dev/null; POLL_PID=
    PEAK=$(sort -n "$GPU_MEM" | tail -n 1)
fi
AGREE=$("$PY" -c "print('yes' if float('$DIFF') <= 1e-2 else 'no')")
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr ' ' '_')
echo "gpu=${GPU:-unknown} samples=$N_SAMPLES points=$POINTS images=$N_IMAGES render_s_per_sample=$RENDER_S" \
     "extract_fp16_images_s=$IPS16 extract_fp32_images_s=$IPS32 train_s_per_step=$STEP_S peak_gpu_mb=$PEAK" \
     "scores_max_diff=$DIFF fp16_fp32_agree=$AGREE pointad_fixture=$POINTAD $SERVE"
[ "$AGREE" = yes ] || { echo "gpu_check: fp16 and fp32 scores differ by $DIFF (> 1e-2)" >&2; exit 1; }
exit 0
