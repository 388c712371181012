"""Who am I in the job? `init_distributed(cfg.parallel)` reads the launcher's environment and joins the
process group. Three launchers are understood, by their environment variables alone (read and
checked by clipav2.launcher):

- torchrun and the `deepspeed` launcher: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT;
- SLURM `srun`: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of SLURM_NODELIST
  (MASTER_ADDR / MASTER_PORT win when set; the port defaults to 29500).

Without either, the run is one process. The backend is nccl on CUDA and gloo on the CPU; the
collective timeout is `parallel.timeout_minutes`, so a crashed rank stops the others instead
of leaving them blocked forever. CUDA runs also get a gloo side group (`host_group()`) for
host-side agreements that must not wait on the GPU.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from clipav2.launcher import launcher_env


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group exists (collectives may be called)."""
        return dist.is_available() and dist.is_initialized()


_HOST_GROUP = None


def _make_host_group(cuda: bool, timeout_minutes: float) -> None:
    """A gloo group over the same ranks for small host-side agreements (the preemption flag after
    every step): with NCCL, reading a collective's result would wait for the GPU to drain."""
    global _HOST_GROUP
    if cuda:
        _HOST_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=timeout_minutes))


def host_group():
    """The group for host-side collectives on CPU tensors: the gloo side group on CUDA runs, None
    (the default group, itself gloo) on CPU runs; None also when the group was made elsewhere."""
    return _HOST_GROUP


def any_rank(world, flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank. Collective, and called every step (is a
    checkpoint due? was a signal received?), so it votes with a CPU tensor over the host group
    and never waits on the GPU's queue; only without a host group on CUDA does it use the device."""
    if world is None or not world.distributed:
        return flag
    group = host_group()
    device = "cpu" if group is not None or world.device.type == "cpu" else world.device
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def init_distributed(parallel) -> World:
    """Join the job's process group (once) and return this process's place in it.

    `parallel`: the parallel settings (`cfg.parallel`: strategy, timeout_minutes). A lone process
    still gets a one-member group when the strategy needs one (ddp, fsdp and deepspeed all call
    collectives). `single` under a launcher of several processes is refused
    by the config's check against the world (`Config.validate`)."""
    info = launcher_env()
    strategy = parallel.strategy
    if info is None and strategy != "single":
        info = {"rank": 0, "world_size": 1, "local_rank": 0, "master_addr": "127.0.0.1", "master_port": _free_port()}
    cuda = torch.cuda.is_available()
    local_rank = info["local_rank"] if info else 0
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if info is None:
        return World(device=device)
    if not dist.is_initialized():
        os.environ["MASTER_ADDR"] = info["master_addr"]
        os.environ["MASTER_PORT"] = str(info["master_port"])
        # as torchrun sets them: DeepSpeed insists on LOCAL_RANK (an srun launch has only SLURM_*)
        for key in ("rank", "world_size", "local_rank"):
            os.environ.setdefault(key.upper(), str(info[key]))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            rank=info["rank"],
            world_size=info["world_size"],
            timeout=datetime.timedelta(minutes=parallel.timeout_minutes),
            device_id=device if cuda else None,
        )
        _make_host_group(cuda, parallel.timeout_minutes)
    return World(rank=info["rank"], world_size=info["world_size"], local_rank=local_rank, device=device)


def device_name(device: torch.device) -> str:
    """The accelerator's name (what the price table and the MFU peak are looked up by)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
