#!/usr/bin/env bash
# CLIPA-v2 ViT-H/14 on one node (8 GPUs) through the `deepspeed` launcher, or torchrun for
# STRATEGY=fsdp|ddp. Usage:
#   DATA='/data/laion/{00000..41407}.tar' launch/h14.sh [key=value overrides...]
# Settings (environment variables, with their defaults) are listed in launch/common.sh;
# DRY_RUN=1 prints the commands. Running it again resumes from RUN_DIR. See docs/launch.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CONFIG:=$(dirname "$here")/configs/h14.yaml}"  # the recipe
: "${RUN_DIR:=runs/h14}"  # checkpoints, logs and the cost ledger; resumes from here
# shellcheck source=launch/common.sh
. "$here/common.sh"
launch_single_node "$@"
