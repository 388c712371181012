#!/usr/bin/env bash
# The torch versions we claim, each tried in a venv of its own: install the project beside that
# torch (and the torchvision built for it), run the core tests, a shortened demo, and a 2-rank FSDP
# run killed (SIGKILL) after its first checkpoint and started again, which must resume, not restart.
# Prints one table row per version, the form docs/compat.md keeps.
#
#   tools/torch_matrix.sh 2.8 2.11 2.14.1          # torch versions (a minor alone: its newest patch)
#   PYTHON=python3.10 tools/torch_matrix.sh 2.8    # another interpreter
#   VENV_2_14_1=/path/to/venv tools/torch_matrix.sh 2.14.1   # reuse a venv that has that torch
#
# Environment: PYTHON (default python3), VENVS (where the venvs go, default /tmp/clipav2-torch;
# each is deleted after its row unless KEEP=1), VENV_<version with _ for .> (an existing venv to use
# as it is, never deleted), CORE (the pytest paths of the core tests), OUT (logs, default
# torch_matrix_out), STEPS (default "core demo fsdp"). CPU use is one thread a process (the demo and FSDP runs are small).
set -uo pipefail  # no -e: a failing step is recorded in its row and the next step runs
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
VENVS=${VENVS:-/tmp/clipav2-torch}
OUT=${OUT:-torch_matrix_out}
STEPS=${STEPS:-core demo fsdp}
# What depends on torch internals or its distributed stack: checkpoints (DCP, the safe loaders),
# the engines, resume, attention, the optimizer's fused kernels, conversion.
CORE=${CORE:-tests/test_compat.py tests/test_checkpoint.py tests/test_checkpoint_attacks.py tests/test_safe_load.py
tests/test_consolidate.py tests/test_train_resume.py tests/test_train_strategies.py tests/test_attention.py
tests/test_train_step.py tests/test_optim.py tests/test_convert.py}
[ $# -gt 0 ] || { echo "usage: tools/torch_matrix.sh TORCH_VERSION..." >&2; exit 2; }
[ -n "${CLIPAV2_VOCAB:-}" ] && [ -n "${NLTK_DATA:-}" ] ||
  echo "note: CLIPAV2_VOCAB or NLTK_DATA unset: offline, the tests and runs need both (README, Text data)" >&2
mkdir -p "$OUT" "$VENVS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH=$REPO DS_ACCELERATOR=cpu
ROWS=()

torchvision_for() {  # torch 2.N pairs with torchvision 0.(N+15)
  local minor=${1#2.}
  echo "0.$(( ${minor%%.*} + 15 )).*"
}

pin() {  # "2.8" -> "==2.8.*", "2.14.1" -> "==2.14.1"
  case $1 in *.*.*) echo "==$1" ;; *) echo "==$1.*" ;; esac
}

install() {  # $1 venv, $2 torch version
  "$PYTHON" -m venv "$1" &&
    "$1/bin/python" -m pip install -q "torch$(pin "$2")" "torchvision==$(torchvision_for "$2")" &&
    "$1/bin/python" -m pip install -q "${REPO}[dev,deepspeed]"
}

core_tests() {  # prints "N passed, M failed"
  local log=$1
  # shellcheck disable=SC2086
  timeout 3600 "$PY" -m pytest -q -p no:cacheprovider $CORE >"$log" 2>&1
  local summary
  summary=$(tail -1 "$log" | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
  echo "${summary:-no result}"
}

demo() {  # the demo recipe at a quarter of its samples on a small generated set: final top-1
  local dir=$1 log=$2
  timeout 1800 "$PY" -m clipav2 train configs/demo.yaml "run_dir=$dir/run" data.demo=false \
    "data.train=$dir/data/train" "data.eval=$dir/data/eval" data.workers=0 log.progress=false \
    stages.pretrain.samples=12288 stages.finetune.samples=4096 stages.pretrain.warmup_steps=10 \
    stages.finetune.warmup_steps=4 >"$log" 2>&1 || { echo "failed ($(grep -c . "$log") lines in log)"; return; }
  "$PY" - "$dir/run/eval.jsonl" <<'EOF'
import json, sys
final = [e for e in map(json.loads, open(sys.argv[1])) if e["when"] == "stage_end"][-1]
print(f"ok, top-1 {100 * final['top1']:.1f}%")
EOF
}

kill_tree() {  # SIGKILL a process and its descendants at once, as a lost node would (torchrun starts
  # its workers in sessions of their own, so killing torchrun's group would leave them running)
  local pids=("$1") i=0
  while [ $i -lt ${#pids[@]} ]; do
    mapfile -t -O ${#pids[@]} pids < <(ps -o pid= --ppid "${pids[$i]}" | tr -d ' ')
    i=$((i + 1))
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}

fsdp_kill_resume() {  # 2 ranks; SIGKILL once a checkpoint is complete; the rerun must resume
  local dir=$1 log=$2 port
  port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  local cmd=("$PY" -m torch.distributed.run --nproc_per_node 2 --master_port "$port" -m clipav2 train
    configs/demo.yaml "run_dir=$dir/fsdp" model.name=tiny parallel.strategy=fsdp parallel.micro_batch=16
    data.demo=false "data.train=$dir/data/train" "data.eval=$dir/data/eval" data.workers=0 log.progress=false
    checkpoint.every_steps=4 stages.pretrain.image_size=16 stages.pretrain.samples=4096 stages.pretrain.global_batch=32
    stages.pretrain.warmup_steps=2 stages.finetune.image_size=32 stages.finetune.samples=256
    stages.finetune.global_batch=32 stages.finetune.warmup_steps=2)
  "${cmd[@]}" >"$log" 2>&1 &
  local pid=$! waited=0
  until compgen -G "$dir/fsdp/checkpoints/pretrain/step_*/manifest.json" >/dev/null; do
    sleep 0.5; waited=$((waited + 1))
    kill -0 "$pid" 2>/dev/null || { echo "ended before a checkpoint (see $log)"; return; }
    [ $waited -lt 1200 ] || { kill_tree "$pid"; echo "no checkpoint in 10 min"; return; }
  done
  kill_tree "$pid"; wait "$pid" 2>/dev/null
  echo "--- killed; again ---" >>"$log"
  timeout 1800 "${cmd[@]}" >>"$log" 2>&1 || { echo "rerun failed"; return; }
  local step
  step=$(sed -n 's/.*resuming at step \([0-9,]*\).*/\1/p' "$log" | head -1)
  if [ -n "$step" ] && [ -f "$dir/fsdp/finetune.safetensors" ]; then echo "resumed at step $step"
  else echo "restarted from step 0"; fi
}

for version in "$@"; do
  tag=${version//./_}
  reuse_var=VENV_$tag
  venv=${!reuse_var:-$VENVS/torch$version}
  log_dir=$OUT/torch$version
  work=$(mktemp -d)
  # DeepSpeed's JIT-built ops (its CPU shared-memory collectives) get a cache of the row's own: torch
  # keys the default one by Python and CUDA version only, so 2.11 and 2.14.1 (both cu130) would
  # share it, and the lock file 2.14.1's builder leaves there (an flock) stalls 2.11's for ever
  export TORCH_EXTENSIONS_DIR=$work/torch_extensions
  mkdir -p "$log_dir"
  echo "== torch $version: $venv (logs in $log_dir)" >&2
  if [ -z "${!reuse_var:-}" ] && ! install "$venv" "$version" >"$log_dir/install.log" 2>&1; then
    ROWS+=("| $version | | | | install failed (see $log_dir/install.log) | | |")
    rm -rf "$work"; continue
  fi
  PY=$venv/bin/python
  versions=$("$PY" - <<'EOF'
import platform
from importlib.metadata import version
print(" | ".join(version(p).split("+")[0] for p in ("torch", "torchvision")) + " | "
      + version("deepspeed") + " | " + platform.python_version())
EOF
)
  core=skipped demo_result=skipped resume=skipped steps=$STEPS
  [[ " $steps " != *" core "* ]] || { echo "   core tests" >&2; core=$(core_tests "$log_dir/core.log"); }
  if [[ " $steps " == *" demo "* || " $steps " == *" fsdp "* ]] &&
    ! "$PY" -m clipav2 data demo "$work/data" --train 4000 --eval 360 >"$log_dir/data.log" 2>&1; then
    demo_result="no data (see $log_dir/data.log)" steps=core
  fi
  [[ " $steps " != *" demo "* ]] || { echo "   demo" >&2; demo_result=$(demo "$work" "$log_dir/demo.log"); }
  [[ " $steps " != *" fsdp "* ]] || { echo "   fsdp kill + resume" >&2; resume=$(fsdp_kill_resume "$work" "$log_dir/fsdp.log"); }
  ROWS+=("| $versions | $core | $demo_result | $resume |")
  rm -rf "$work"
  [ -n "${!reuse_var:-}" ] || [ "${KEEP:-0}" = 1 ] || rm -rf "$venv"
  echo "   ${ROWS[-1]}" >&2
done

echo "| torch | torchvision | deepspeed | Python | core tests | demo (shortened) | 2-rank FSDP, SIGKILL, rerun |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
