#!/usr/bin/env bash
# The GPU check, in one call on one bare H100/H200 without network: install what the image lacks
# from wheels/, run the CUDA tests, then benchmark rows beside open_clip, each printed and saved
# the moment it finishes, with a time guard before each so the whole check ends inside its budget.
# docs/benchmarks.md says what it prints and how to record it.
#
#   tools/gpu_check.sh --fetch-wheels   # HERE, with the package index: fill wheels/ (Python 3.12, x86-64)
#   tools/gpu_check.sh                  # THERE, with wheels/ carried: tests, then the rows
#   CPU_SMOKE=1 tools/gpu_check.sh      # anywhere: the same path on the CPU, tiny model, 2 steps a row,
#                                       # compiled rows on the CPU inductor
#
# Environment: OUT (output folder, default gpu_check_out; five files go there: env.md, tests.txt,
# rows.jsonl, table.md, log.txt), PYTHON (default python3), GPU_CHECK_BUDGET_S (default 500; 1500 for the smoke),
# WHEELS (default wheels), GPU_CHECK_SITE (install target, default /tmp/gpu_check_site), STEPS,
# WARMUP, and the micro-batches H14_MB_84 (512), H14_MB_224 (128), BIGG_MB (256).
set -uo pipefail  # no -e: a failed test or row is recorded and the check goes on
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
[ "${1:-}" = --fetch-wheels ] && exec "$PYTHON" tools/gpu_check_wheels.py fetch "$WHEELS"

START=$(date +%s)
# the CPU smoke compiles its rows on the CPU inductor: minutes per checkpointing variant on 2 cores
if [ "${CPU_SMOKE:-0}" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-1500}; else BUDGET=${GPU_CHECK_BUDGET_S:-500}; fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
: >"$OUT/rows.jsonl"
: >"$OUT/table.md"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export PYTHONUNBUFFERED=1
# compiled kernels and autotuning results stay out of OUT (only the records come back)
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/gpu_check_inductor}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "$*" | tee -a "$LOG"; }

SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
"$PYTHON" tools/gpu_check_wheels.py install "$WHEELS" "$SITE" 2>&1 | tee -a "$LOG" || exit 1
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

if [ "${CPU_SMOKE:-0}" = 1 ]; then
  SMOKE=(--smoke) STEPS=${STEPS:-2} WARMUP=${WARMUP:-1} TEST_TIMEOUT=120
else
  SMOKE=() STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} TEST_TIMEOUT=180
fi

say "== machine"
"$PYTHON" tools/gpu_check_report.py env | tee "$OUT/env.md" | tee -a "$LOG"
say "budget ${BUDGET} s; ${STEPS} timed steps after ${WARMUP} warm-up per row; $(elapsed) s so far"

say "== CUDA tests (skipped without CUDA)"
# one line per test as it ends (-v), so a run the timeout stops still says what passed
timeout -k 10 "$TEST_TIMEOUT" "$PYTHON" -m pytest -o addopts= -v -rs -p no:cacheprovider tests/test_cuda_attention.py \
  tests/test_cuda_step.py 2>&1 | tee "$OUT/tests.txt" | tail -n 40 | tee -a "$LOG"
say "tests exit ${PIPESTATUS[0]} (124: timed out); $(elapsed) s so far"

# the rows, in one process; if it dies, the row it died in is recorded and the rest still run
DEADLINE=$(( START + BUDGET ))
ROWS_ARGS=(--out "$OUT" --deadline "$DEADLINE" --marker "$TMP/in_flight" --steps "$STEPS" --warmup "$WARMUP" "${SMOKE[@]}")
for _ in 1 2 3; do
  left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -gt 0 ] || break
  # shellcheck disable=SC2094  # both append to the log: the rows' lines and, quietly, their stderr
  timeout -k 10 "$left" "$PYTHON" tools/gpu_check_rows.py "${ROWS_ARGS[@]}" 2>>"$LOG" | tee -a "$LOG"
  code=${PIPESTATUS[0]}
  [ "$code" = 0 ] && break
  if [ "$code" = 124 ] || [ "$code" = 137 ]; then why="stopped at the time budget"; else why="the process died (exit $code; see log.txt)"; fi
  "$PYTHON" tools/gpu_check_rows.py "${ROWS_ARGS[@]}" --interrupted "$why" | tee -a "$LOG"
  [ "$why" = "stopped at the time budget" ] && break
done
# rows never reached (budget spent, or a third death) are listed as skipped
"$PYTHON" tools/gpu_check_rows.py "${ROWS_ARGS[@]}" --deadline "$(date +%s)" | tee -a "$LOG"

say "== table ($(elapsed) s)"
cat "$OUT/env.md" "$OUT/table.md" | tee -a "$LOG"
