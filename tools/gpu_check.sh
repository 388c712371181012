#!/usr/bin/env bash
# The GPU check: on one bare GPU machine without network, install what the image lacks from
# wheels/, run the GPU tests, then time H/14 at 84/T8, 224/T32 (0.3 mask), 336/T32 (0.4 mask)
# and bigG/14 at 84/T8 (FSDP2 + checkpointing, largest micro-batch that fits) beside open_clip,
# and print one table. Budget: under 8 minutes on an H100. See docs/performance.md.
#
#   tools/gpu_check.sh --fetch-wheels   # HERE, with network: fill wheels/ for Python 3.12 x86-64
#   tools/gpu_check.sh                  # THERE: install from wheels/, GPU tests, benchmark table
#   CPU_SMOKE=1 tools/gpu_check.sh      # anywhere: the same path on the CPU, tiny model and shapes
#
# Environment: PYTHON (default python3), OUT_DIR (default gpu_check_out), STEPS, WARMUP,
# H14_MB_84 / H14_MB_224 / H14_MB_336 (micro-batches), BIGG_MB_START / BIGG_MB_MAX (search range).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-gpu_check_out}
SMOKE=${CPU_SMOKE:-0}

# The GPU image (Python 3.12, torch 2.11) has torch, triton, timm (so torchvision, huggingface_hub,
# PyYAML), numpy, pytest, safetensors, tokenizers. These wheels fill the rest, deps included.
WHEELS_BINARY="webdataset braceexpand nltk click joblib regex tqdm open-clip-torch ftfy wcwidth hjson ninja
psutil py-cpuinfo pydantic pydantic-core annotated-types typing-inspection typing-extensions msgpack einops
nvidia-ml-py packaging"

fetch_wheels() {
  mkdir -p wheels
  # deepspeed ships only an sdist: build its (pure-Python) wheel here; its ops compile on first use.
  "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w wheels "deepspeed==0.19.8"
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  "$PYTHON" -m pip download --no-deps --only-binary=:all: -d wheels --python-version 3.12 \
    --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any $WHEELS_BINARY
  ls wheels
}

install_missing() {
  # module:distribution pairs; pip takes dependencies from wheels/ and keeps what is installed
  local pair module dist
  for pair in deepspeed:deepspeed webdataset:webdataset nltk:nltk open_clip:open-clip-torch; do
    module=${pair%%:*} dist=${pair#*:}
    if ! "$PYTHON" -c "import $module" 2>/dev/null; then
      [ -d wheels ] || { echo "gpu_check: $module is missing and there is no wheels/ (run --fetch-wheels where there is network)" >&2; exit 1; }
      "$PYTHON" -m pip install -q --no-index --find-links wheels "$dist"
    fi
  done
}

if [ "${1:-}" = "--fetch-wheels" ]; then
  fetch_wheels
  exit 0
fi

start=$(date +%s)
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.json
install_missing
# the project runs from the source tree: nothing to build, nothing to fetch
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$PWD/$OUT_DIR/inductor_cache}"

if [ "$SMOKE" = 1 ]; then
  DEVICE=(--device cpu)
  STEPS=${STEPS:-2} WARMUP=${WARMUP:-1}
  # tiny (patch 8) at 32 / 64 / 96 px stands in for 84 / 224 / 336
  H14=(configs/h14.yaml model.name=tiny stages.pretrain.image_size=32 stages.finetune224.image_size=64
       stages.finetune336.image_size=96)
  BIGG=(configs/bigg14.yaml model.name=tiny stages.pretrain.image_size=32)
  MB84=${H14_MB_84:-8} MB224=${H14_MB_224:-4} MB336=${H14_MB_336:-4}
  BIGG_START=${BIGG_MB_START:-4} BIGG_MAX=${BIGG_MB_MAX:-16}
  TIMEOUT=600
  TESTS=(tests/test_bench_mfu.py tests/test_bench_flops.py)
else
  DEVICE=(--device cuda)
  STEPS=${STEPS:-10} WARMUP=${WARMUP:-3}
  H14=(configs/h14.yaml)
  BIGG=(configs/bigg14.yaml)
  MB84=${H14_MB_84:-512} MB224=${H14_MB_224:-128} MB336=${H14_MB_336:-64}
  BIGG_START=${BIGG_MB_START:-256} BIGG_MAX=${BIGG_MB_MAX:-1024}
  TIMEOUT=150
  # tests that need CUDA carry "cuda" or "gpu" in their names; on the CPU they skip
  mapfile -t TESTS < <(grep -lE "cuda|gpu" tests/test_*.py || true)
fi

echo "== $(date -u +%FT%TZ) $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== tests: ${TESTS[*]}"
if [ "$SMOKE" = 1 ]; then
  timeout 300 "$PYTHON" -m pytest -q -x "${TESTS[@]}" || echo "gpu_check: tests FAILED" >&2
else
  timeout 120 "$PYTHON" -m pytest -q -rs -k "cuda or gpu" "${TESTS[@]}" || echo "gpu_check: GPU tests FAILED" >&2
fi

bench() {  # name, then clipav2 bench arguments
  local name=$1
  shift
  echo "== bench $name: $*"
  local code=0
  timeout "$TIMEOUT" "$PYTHON" -m clipav2 bench "$@" "${DEVICE[@]}" --steps "$STEPS" --warmup "$WARMUP" \
    --json >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log" || code=$?
  if [ "$code" != 0 ]; then
    echo "gpu_check: bench $name exited $code (124: timed out); see $OUT_DIR/$name.log" >&2
    tail -n 5 "$OUT_DIR/$name.log" >&2 || true
  fi
}

# H/14: one GPU, the single strategy, blocks compiled; selective checkpointing where memory needs it
bench h14_84 "${H14[@]}" --stage pretrain --strategy single --compile --checkpointing none \
  --micro-batch "$MB84" --baseline open_clip
bench h14_224 "${H14[@]}" --stage finetune224 --strategy single --compile --checkpointing every_2 \
  --micro-batch "$MB224" --baseline open_clip
bench h14_336 "${H14[@]}" --stage finetune336 --strategy single --compile --checkpointing every_2 \
  --micro-batch "$MB336" --baseline open_clip
# bigG: FSDP2 (world 1) with every block checkpointed, the largest micro-batch found by a short search
bench bigg_84 "${BIGG[@]}" stages.pretrain.micro_batch="$BIGG_START" --stage pretrain --strategy fsdp --compile --checkpointing all \
  --micro-batch auto --search-max "$BIGG_MAX" --baseline open_clip

echo "== table ($(( $(date +%s) - start )) s so far)"
"$PYTHON" - "$OUT_DIR" <<'PY'
import json, pathlib, sys
from clipav2.perf.result import Row, table

rows = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    try:
        rows += [Row(**r) for r in json.loads(path.read_text())]
    except (ValueError, TypeError):
        print(f"{path.stem}: no result (see {path.with_suffix('.log')})")
print(table(rows))
if rows:
    r = rows[0]
    print(f"device: {r.device}; torch {r.flags.get('torch')}; {r.steps} timed steps after {r.warmup} warm-up")
    for r in rows:
        print(f"  {r.trainer:<9} {r.model} {r.stage}: {r.flags}")
PY
echo "== done in $(( $(date +%s) - start )) s"
