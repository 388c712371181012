"""`torchrun`, except that it exits with its workers' exit code.

torchrun exits 1 whenever a worker fails, so the launch scripts could not tell a preemption
(clipav2.exitcodes.PREEMPTED, 75: requeue) from a budget stop (76: never requeue) or a crash.
Same arguments as torchrun: python launch/torchrun_keep_exitcode.py --nproc_per_node=8 -m clipav2 train ...
"""
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main


def worker_exit_code(error: ChildFailedError) -> int:
    """The earliest failure that exited on its own; the others are usually torchrun's teardown
    (SIGTERM) of the ranks still running. A worker killed by a signal maps to 128 + signal."""
    failures = sorted(error.failures.values(), key=lambda f: f.timestamp)
    for failure in failures:
        if failure.exitcode > 0:
            return failure.exitcode
    return 128 - failures[0].exitcode if failures and failures[0].exitcode < 0 else 1


if __name__ == "__main__":
    try:
        main()
    except ChildFailedError as e:
        sys.exit(worker_exit_code(e))
