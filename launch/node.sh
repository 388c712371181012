#!/usr/bin/env bash
''':' # a no-op for bash; for Python the start of a string that hides the bash part (docs/launch.md)
# A CLIPA-v2 recipe on one node (8 GPUs) through the `deepspeed` launcher, or torchrun for
# STRATEGY=fsdp|ddp. The recipe is the name this file is run by: launch/h14.sh (ViT-H/14) and
# launch/g14.sh (ViT-bigG/14) are links to it. Either form:
#   DATA='/data/laion/{00000..41407}.tar' launch/h14.sh [key=value overrides...]
#   DATA='/data/laion/{00000..41407}.tar' deepspeed [--num_gpus N] launch/g14.sh [key=value overrides...]
# Settings (environment variables, with their defaults) are listed in launch/common.sh;
# DRY_RUN=1 prints the commands. Running it again resumes from RUN_DIR. See docs/launch.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$(basename "${BASH_SOURCE[0]}")" in
  h14.sh) recipe=h14 ;;
  g14.sh) recipe=bigg14 ;;
  *) echo "launch: run this file as launch/h14.sh or launch/g14.sh (the name picks the recipe)" >&2; exit 2 ;;
esac
: "${CONFIG:=$(dirname "$here")/configs/$recipe.yaml}"  # the recipe
: "${RUN_DIR:=runs/$recipe}"  # checkpoints, logs and the cost ledger; resumes from here
# shellcheck source=launch/common.sh
. "$here/common.sh"
launch_single_node "$@"
exit
# shellcheck disable=SC2317  # never run: it wraps the Python part below as a here-document
: <<'pass'
'''
# Python reads everything above as one string. `deepspeed launch/h14.sh` runs this file as
# `python -u launch/h14.sh --local_rank=N` once per GPU; each such process hands itself to bash
# under the same name, which reads the same settings and becomes that rank's trainer
# (launch_single_node sees the launcher's LOCAL_RANK and WORLD_SIZE). For bash and shellcheck
# these lines are a here-document.
import os
import sys

os.execvp("bash", ["bash", __file__, *(a for a in sys.argv[1:] if not a.startswith("--local_rank="))])
pass
