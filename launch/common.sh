# shellcheck shell=bash
# Shared by launch/h14.sh, launch/g14.sh and launch/slurm/helper.sh (sourced, never run).
# Every setting a user changes is an environment variable; the recipe scripts set CONFIG and
# RUN_DIR defaults before sourcing this file. See docs/launch.md.

: "${CONFIG:=}"              # recipe YAML (h14.sh, g14.sh and the .sbatch files set their own)
: "${RUN_DIR:=}"             # checkpoints, logs, cost ledger; a run resumes from here (same)
: "${DATA:=}"                # training shards, e.g. '/data/laion/{00000..41407}.tar'; empty: the recipe's data.train
: "${EVAL_DATA:=}"           # zero-shot eval set (ImageFolder dir or labelled shards); empty: the recipe's data.eval
: "${NUM_GPUS:=8}"           # processes per node (one per GPU)
: "${STRATEGY:=}"            # deepspeed | fsdp | ddp; empty: the recipe's parallel.strategy
: "${ZERO_STAGE:=}"          # DeepSpeed ZeRO stage 1|2|3; empty: the recipe's parallel.zero_stage
: "${LAUNCHER:=}"            # deepspeed | torchrun; empty: deepspeed when the run's strategy is deepspeed, else torchrun
: "${MASTER_PORT:=29500}"    # rendezvous port on the first node
: "${DEVICE:=cuda}"          # cuda | cpu (cpu: gloo and DS_ACCELERATOR=cpu, for tests)
: "${DRY_RUN:=0}"            # 1: print the exact commands instead of running them
# Extra `key=value` overrides are the script's arguments, passed to `clipav2 train` unchanged.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
  echo "launch: $*" >&2
  exit 2  # clipav2.exitcodes.CONFIG: rejected before anything started
}

check_settings() {
  [ -n "$CONFIG" ] || die "CONFIG is not set: the recipe YAML, e.g. CONFIG=configs/h14.yaml"
  [ -n "$RUN_DIR" ] || die "RUN_DIR is not set: the run directory, e.g. RUN_DIR=runs/h14"
  case "$STRATEGY" in "" | deepspeed | fsdp | ddp) ;; *) die "STRATEGY=$STRATEGY is not one of deepspeed, fsdp, ddp (or empty for the recipe's)" ;; esac
  case "$ZERO_STAGE" in "" | 1 | 2 | 3) ;; *) die "ZERO_STAGE=$ZERO_STAGE is not one of 1, 2, 3 (or empty for the recipe's)" ;; esac
  case "$NUM_GPUS" in '' | *[!0-9]* | 0) die "NUM_GPUS=$NUM_GPUS is not a positive integer" ;; esac
  case "$DEVICE" in cuda | cpu) ;; *) die "DEVICE=$DEVICE is not one of cuda, cpu" ;; esac
  case "$LAUNCHER" in "" | deepspeed | torchrun) ;; *) die "LAUNCHER=$LAUNCHER is not one of deepspeed, torchrun" ;; esac
  if [ "$DEVICE" = cpu ]; then
    export DS_ACCELERATOR=cpu  # DeepSpeed's CPU accelerator: gloo, no CUDA
    export CUDA_VISIBLE_DEVICES=""  # the engine picks gloo when it sees no GPU
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  fi
  # grow CUDA memory segments instead of fragmenting them: the changing shapes of a multi-stage
  # run (84 -> 224 -> 336 px) would otherwise strand reserved blocks (a user's setting wins)
  export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
}

# TRAIN_ARGS: what follows `clipav2` on every rank. Our settings come before the user's
# overrides, so an explicit `key=value` argument wins. The strategy is the recipe's unless
# STRATEGY names one: the recipe states it once, the launcher only passes a choice on.
build_train_args() {
  TRAIN_ARGS=(train "$CONFIG" "run_dir=$RUN_DIR")
  if [ -n "$STRATEGY" ]; then TRAIN_ARGS+=("parallel.strategy=$STRATEGY"); fi
  if [ -n "$ZERO_STAGE" ]; then TRAIN_ARGS+=("parallel.zero_stage=$ZERO_STAGE"); fi
  if [ -n "$DATA" ]; then TRAIN_ARGS+=("data.train=$DATA"); fi
  if [ -n "$EVAL_DATA" ]; then TRAIN_ARGS+=("data.eval=$EVAL_DATA"); fi
  TRAIN_ARGS+=("$@")
}

# Check the recipe, the overrides and the data paths once, before any process starts, so a typo
# or a missing shard directory is one clear line, not one traceback per GPU. Sets RUN_STRATEGY,
# the run's parallel.strategy (the recipe's, or STRATEGY, or an override), and the LAUNCHER it takes.
preflight() {
  local world_size=$1 message
  command -v python >/dev/null || die "no python on PATH: activate the project's environment, e.g. . .venv/bin/activate"
  if message=$(python - "$world_size" "${TRAIN_ARGS[@]:1}" 2>&1 <<'EOF'
import sys
from clipav2.config import ConfigError, load_config
world_size, path, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
try:
    cfg = load_config(path, overrides, world_size=world_size, check_data=True)
except ConfigError as e:
    sys.exit(str(e))
print(cfg.parallel.strategy)
EOF
  ); then
    RUN_STRATEGY=${message##*$'\n'}  # the last line: a library's warning may come first
    choose_launcher
    return 0
  fi
  if [[ "$message" == *ModuleNotFoundError* ]]; then
    message="$(command -v python) cannot import clipav2 and its dependencies (${message##*ModuleNotFoundError: }); activate the project's environment, e.g. . .venv/bin/activate"
  elif [ -z "$DATA" ] && [[ "$message" == data.train:* ]]; then
    message="$message; set DATA to your training shard pattern, e.g. DATA='/data/laion/{00000..41407}.tar'"
  elif [ -z "$EVAL_DATA" ] && [[ "$message" == data.eval:* ]]; then
    message="$message; set EVAL_DATA to your ImageNet validation folder, or pass data.eval=null"
  fi
  die "$message"
}

# LAUNCHER, unless set: DeepSpeed's for a DeepSpeed run, else torchrun. ZERO_STAGE is refused
# for another strategy rather than passed on to be ignored.
choose_launcher() {
  if [ -n "$ZERO_STAGE" ] && [ "$RUN_STRATEGY" != deepspeed ]; then
    die "ZERO_STAGE=$ZERO_STAGE applies to DeepSpeed, and this run's strategy is $RUN_STRATEGY (the recipe's, or an override); add STRATEGY=deepspeed"
  fi
  if [ -z "$LAUNCHER" ]; then
    if [ "$RUN_STRATEGY" = deepspeed ]; then LAUNCHER=deepspeed; else LAUNCHER=torchrun; fi
  fi
}

# LAUNCH_CMD: the command that starts NUM_GPUS trainers on this node.
#   build_launch_cmd NNODES NODE_RANK MASTER_ADDR [HOSTFILE] [RDZV_ID]
build_launch_cmd() {
  local nnodes=$1 node_rank=$2 master_addr=$3 hostfile=${4:-} rdzv_id=${5:-clipav2}
  if [ "$LAUNCHER" = deepspeed ]; then
    LAUNCH_CMD=(deepspeed)
    if [ "$nnodes" -gt 1 ]; then
      # every node runs its own launcher (no ssh/pdsh), ranks laid out by the shared hostfile
      LAUNCH_CMD+=("--hostfile=$hostfile" --no_ssh "--node_rank=$node_rank")
    else
      LAUNCH_CMD+=("--num_gpus=$NUM_GPUS")
    fi
    LAUNCH_CMD+=("--master_addr=$master_addr" "--master_port=$MASTER_PORT" --no_local_rank --module clipav2)
  else
    # torchrun exits 1 whatever its workers returned; this wrapper keeps their exit code (75, 76...)
    LAUNCH_CMD=(python "$LAUNCH_DIR/torchrun_keep_exitcode.py" "--nproc_per_node=$NUM_GPUS" --max_restarts=0)
    if [ "$nnodes" -gt 1 ]; then
      LAUNCH_CMD+=("--nnodes=$nnodes" --rdzv_backend=c10d "--rdzv_endpoint=$master_addr:$MASTER_PORT" "--rdzv_id=$rdzv_id")
    else
      LAUNCH_CMD+=("--master_addr=$master_addr" "--master_port=$MASTER_PORT")
    fi
    LAUNCH_CMD+=(-m clipav2)
  fi
  LAUNCH_CMD+=("${TRAIN_ARGS[@]}")
}

print_cmd() {
  local word line=""
  for word in "$@"; do line+="$(printf '%q' "$word") "; done
  echo "${line% }"
}

# signal_tree SIG PID: PID and every process under it.
signal_tree() {
  local sig=$1 pid=$2 child
  for child in $(pgrep -P "$pid"); do signal_tree "$sig" "$child"; done
  kill -s "$sig" "$pid" 2>/dev/null || true
}

# run_preemptible TARGET CMD...: run CMD and return its exit code. A USR1 or TERM to this shell
# is passed on as USR1, the trainers' "checkpoint and exit 75" signal:
#   TARGET=tree   to every process under CMD, as slurmstepd does with --signal=USR1. CMD (a
#                 launcher) starts with USR1 ignored, so only the trainers, which install a
#                 handler, act on it;
#   TARGET=child  to CMD alone (srun, which forwards it to every task).
run_preemptible() {
  local target=$1 child rc interrupted=0
  shift
  if [ "$target" = tree ]; then
    (trap '' USR1 && exec "$@") &
  else
    "$@" &
  fi
  child=$!
  # shellcheck disable=SC2064  # expand $child now: it is local to this function
  if [ "$target" = tree ]; then
    trap "interrupted=1; signal_tree USR1 $child" USR1 TERM
  else
    trap "interrupted=1; kill -s USR1 $child 2>/dev/null || true" USR1 TERM
  fi
  while :; do
    interrupted=0
    wait "$child" && rc=0 || rc=$?
    # a trapped signal ends `wait` early (status > 128) while CMD is still running: wait again
    if [ "$rc" -gt 128 ] && [ "$interrupted" = 1 ]; then continue; fi
    break
  done
  trap - USR1 TERM
  return "$rc"
}

# explain_exit RC: one line on what the trainers' exit code means for the next step.
explain_exit() {
  case "$1" in
    0) echo "launch: training finished" ;;
    75) echo "launch: preempted; a checkpoint is in $RUN_DIR and the same command resumes from it" ;;
    76) echo "launch: the budget guard stopped the run with a checkpoint; raise cost.budget_usd to go on (not requeued)" ;;
    77) echo "launch: training diverged (non-finite losses); a checkpoint is in $RUN_DIR; look before resuming" ;;
    2) echo "launch: the configuration was rejected" ;;
    *) echo "launch: training failed with exit code $1" ;;
  esac >&2
}

# One trainer in this process, when a launcher already started one process per GPU and set
# RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (`deepspeed launch/h14.sh`): the same
# `clipav2 train` arguments as below; NUM_GPUS, LAUNCHER and MASTER_PORT are the launcher's business.
run_as_rank() {
  check_settings
  build_train_args "$@"
  if [ "$DRY_RUN" = 1 ]; then
    print_cmd python -m clipav2 "${TRAIN_ARGS[@]}"
    exit 0
  fi
  exec python -m clipav2 "${TRAIN_ARGS[@]}"
}

# One node: NUM_GPUS trainers under the deepspeed launcher (or torchrun); under a launcher's
# LOCAL_RANK, this process's trainer.
launch_single_node() {
  if [ -n "${LOCAL_RANK:-}" ] && [ -n "${WORLD_SIZE:-}" ]; then run_as_rank "$@"; fi
  check_settings
  build_train_args "$@"
  preflight "$NUM_GPUS"
  build_launch_cmd 1 0 127.0.0.1
  if [ "$DRY_RUN" = 1 ]; then
    if [ "$DEVICE" = cpu ]; then echo "export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=$OMP_NUM_THREADS"; fi
    echo "export PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF"
    print_cmd "${LAUNCH_CMD[@]}"
    return 0
  fi
  local rc=0
  run_preemptible tree "${LAUNCH_CMD[@]}" || rc=$?
  explain_exit "$rc"
  return "$rc"
}
