#!/usr/bin/env bash
''':' # a no-op for bash; for Python the start of a string that hides the bash part (docs/launch.md)
# CLIPA-v2 ViT-bigG/14 on one node (8 GPUs) through the `deepspeed` launcher, or torchrun for
# STRATEGY=fsdp|ddp. Either form:
#   DATA='/data/laion/{00000..41407}.tar' launch/g14.sh [key=value overrides...]
#   DATA='/data/laion/{00000..41407}.tar' deepspeed [--num_gpus N] launch/g14.sh [key=value overrides...]
# Settings (environment variables, with their defaults) are listed in launch/common.sh;
# DRY_RUN=1 prints the commands. Running it again resumes from RUN_DIR. See docs/launch.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${CONFIG:=$(dirname "$here")/configs/bigg14.yaml}"  # the recipe
: "${RUN_DIR:=runs/bigg14}"  # checkpoints, logs and the cost ledger; resumes from here
# shellcheck source=launch/common.sh
. "$here/common.sh"
launch_single_node "$@"
exit
# shellcheck disable=SC2317  # never run: it wraps the Python part below as a here-document
: <<'pass'
'''
# Python reads everything above as one string. `deepspeed launch/g14.sh` runs this file as
# `python -u launch/g14.sh --local_rank=N` once per GPU; each such process hands itself to bash,
# which reads the same settings and becomes that rank's trainer (launch_single_node sees the
# launcher's LOCAL_RANK and WORLD_SIZE). For bash and shellcheck these lines are a here-document.
import os
import sys

os.execvp("bash", ["bash", __file__, *(a for a in sys.argv[1:] if not a.startswith("--local_rank="))])
pass
