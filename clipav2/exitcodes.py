"""Process exit codes the launch scripts act on (documented in docs/launch.md).

PREEMPTED: SIGTERM/SIGUSR1 received, the step finished and a checkpoint was written: requeue.
BUDGET: the budget guard stopped the run with a checkpoint: do NOT requeue.
DIVERGED: too many consecutive non-finite steps: a checkpoint was written; a human should look.
CONFIG: the configuration or command line was rejected before anything was built (also: RUN_DIR
  in use by another run, a changed recipe, checkpoints of another model, checkpoints of which
  none can be resumed).
FAILED: a code or library error (e.g. one met loading a checkpoint), named in one line: not the
  input's fault, so neither requeue nor start over.
NO_SPACE: the disk filled up writing a checkpoint; the previous checkpoint is kept.
"""
OK = 0
FAILED = 1
CONFIG = 2
NO_SPACE = 74  # EX_IOERR
PREEMPTED = 75  # EX_TEMPFAIL: "try again later"
BUDGET = 76
DIVERGED = 77
INTERRUPTED = 130  # Ctrl-C: checkpoint written (a second Ctrl-C aborts without one)
