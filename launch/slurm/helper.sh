#!/usr/bin/env bash
# The SLURM side of launching, shared by launch/slurm/*.sbatch (which source it and call
# slurm_job) and run by srun on every node as `helper.sh node`. Also, for checking an allocation:
#   launch/slurm/helper.sh rendezvous   # this node's rendezvous address, node rank, world size
# Settings are the environment variables of launch/common.sh (NUM_GPUS = GPUs per node).
# shellcheck source=launch/common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/common.sh"

# From SLURM's variables: NODES (host names), HEAD_ADDR (the first node hosts the rendezvous),
# NNODES, NODE_RANK, WORLD (processes in all), HOSTFILE (DeepSpeed's, on the shared file system).
slurm_rendezvous() {
  local hosts
  [ -n "${SLURM_JOB_NODELIST:-}" ] || die "SLURM_JOB_NODELIST is not set: run this inside a SLURM job (sbatch launch/slurm/h14.sbatch)"
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || die "scontrol show hostnames '$SLURM_JOB_NODELIST' failed"
  mapfile -t NODES <<<"$hosts"
  HEAD_ADDR=${NODES[0]}
  NNODES=${SLURM_NNODES:-${#NODES[@]}}
  NODE_RANK=${SLURM_NODEID:-0}
  WORLD=$((NNODES * NUM_GPUS))
  HOSTFILE="$RUN_DIR/hostfile.${SLURM_JOB_ID:-0}"
  [ "${#NODES[@]}" -eq "$NNODES" ] || die "SLURM_NNODES=$NNODES but the node list has ${#NODES[@]} hosts: $hosts"
}

print_rendezvous() {
  slurm_rendezvous
  printf 'MASTER_ADDR=%s\nMASTER_PORT=%s\nNNODES=%s\nNODE_RANK=%s\nNPROC_PER_NODE=%s\nWORLD_SIZE=%s\n' \
    "$HEAD_ADDR" "$MASTER_PORT" "$NNODES" "$NODE_RANK" "$NUM_GPUS" "$WORLD"
}

# DeepSpeed's hostfile: every node, NUM_GPUS slots each, in SLURM's order (node rank = line).
hostfile_lines() {
  local host
  for host in "${NODES[@]}"; do echo "$host slots=$NUM_GPUS"; done
}

rdzv_id() { echo "${SLURM_JOB_ID:-0}.${SLURM_RESTART_COUNT:-0}"; }

# One task per node: this node's launcher starts NUM_GPUS trainers; exits with their code.
slurm_node() {
  check_settings
  [ -n "$LAUNCHER" ] || die "LAUNCHER is not set: \`helper.sh node\` runs under the batch script, which sets it"
  build_train_args "$@"
  slurm_rendezvous
  build_launch_cmd "$NNODES" "$NODE_RANK" "$HEAD_ADDR" "$HOSTFILE" "$(rdzv_id)"
  run_preemptible tree "${LAUNCH_CMD[@]}"
}

# The batch script: check, start one task per node, requeue on preemption (exit code 75) only.
slurm_job() {
  local rc=0 node
  check_settings
  build_train_args "$@"
  slurm_rendezvous
  preflight "$WORLD"
  export LAUNCHER  # chosen from the run's strategy; every node's `helper.sh node` starts the same one
  local srun_cmd=(srun "--nodes=$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=0 --label)
  # a step's one task would otherwise be confined to one CPU; the launcher needs the node's
  if [ -n "${SLURM_CPUS_ON_NODE:-}" ]; then srun_cmd+=("--cpus-per-task=$SLURM_CPUS_ON_NODE"); fi
  srun_cmd+=(bash "$LAUNCH_DIR/slurm/helper.sh" node "$@")
  if [ "$DRY_RUN" = 1 ]; then
    if [ "$LAUNCHER" = deepspeed ]; then
      echo "# $HOSTFILE:"
      hostfile_lines | sed 's/^/#   /'
    fi
    print_cmd "${srun_cmd[@]}"
    for ((node = 0; node < NNODES; node++)); do
      build_launch_cmd "$NNODES" "$node" "$HEAD_ADDR" "$HOSTFILE" "$(rdzv_id)"
      echo "# node $node (${NODES[$node]}):"
      print_cmd "${LAUNCH_CMD[@]}"
    done
    return 0
  fi
  mkdir -p "$RUN_DIR"
  if [ "$LAUNCHER" = deepspeed ]; then hostfile_lines >"$HOSTFILE"; fi
  echo "=== $(date -Is) job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $NNODES nodes x $NUM_GPUS ($SLURM_JOB_NODELIST), rendezvous $HEAD_ADDR:$MASTER_PORT, run dir $RUN_DIR"
  run_preemptible child "${srun_cmd[@]}" || rc=$?
  explain_exit "$rc"
  if [ "$rc" = 75 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    echo "launch: requeueing job $SLURM_JOB_ID; the next allocation resumes from $RUN_DIR" >&2
    scontrol requeue "$SLURM_JOB_ID"
  fi
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  command=${1:-}
  shift || true
  case "$command" in
    node) slurm_node "$@" ;;
    rendezvous) print_rendezvous ;;
    *) die "usage: $0 node [overrides...] | rendezvous" ;;
  esac
fi
