"""The launcher's environment, read in one place and checked before anything is built (no torch
import here: `clipav2 train` checks it with the config). torchrun and the `deepspeed` launcher set
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; SLURM's `srun` sets SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID and SLURM_NODELIST (whose first host is the rendezvous unless
MASTER_ADDR is set). `clipav2.parallel.env` joins the process group they describe."""
from __future__ import annotations

import os
import re


def first_host(nodelist: str) -> str:
    """The first hostname of a SLURM node list: "gpu[03-05,7],cpu1" -> "gpu03"."""
    head = re.match(r"([^,\[\]]+)(\[([^\]]+)\])?(,|$)", nodelist.strip())
    if not head:
        raise ValueError(f"SLURM_NODELIST: cannot parse {nodelist!r}")
    prefix, _, ranges, _ = head.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


class LauncherEnvError(ValueError):
    """The launcher's variables do not describe a place in a job (one line naming the variable)."""


def _env_int(env, name: str, default=None) -> int:
    text = env.get(name, default)
    try:
        return int(str(text).strip())
    except ValueError:
        raise LauncherEnvError(f"{name}={text!r} is not an integer") from None


def launcher_env(env=os.environ) -> dict | None:
    """rank/world_size/local_rank/master_addr/master_port from the launcher, or None. Raises
    LauncherEnvError when they cannot describe a job: not integers, a world size under 1, a rank
    outside it (which would wait for the missing ranks until the rendezvous times out)."""
    if ("RANK" in env) != ("WORLD_SIZE" in env):
        given, missing = ("RANK", "WORLD_SIZE") if "RANK" in env else ("WORLD_SIZE", "RANK")
        raise LauncherEnvError(f"{given} is set but {missing} is not (a launcher sets both)")
    if "RANK" in env and "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        info = {"rank": _env_int(env, "RANK"), "world_size": _env_int(env, "WORLD_SIZE"),
                "local_rank": _env_int(env, "LOCAL_RANK", 0),
                "master_addr": env.get("MASTER_ADDR", "127.0.0.1"), "master_port": env.get("MASTER_PORT", "29500")}
    elif "SLURM_PROCID" in env and _env_int(env, "SLURM_NTASKS", "1") > 1:
        names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
        addr = env.get("MASTER_ADDR")
        if not addr:
            try:
                addr = first_host(env.get("SLURM_NODELIST", ""))
            except ValueError as e:
                raise LauncherEnvError(str(e)) from None
        info = {"rank": _env_int(env, "SLURM_PROCID"), "world_size": _env_int(env, "SLURM_NTASKS"),
                "local_rank": _env_int(env, "SLURM_LOCALID", 0), "master_addr": addr,
                "master_port": env.get("MASTER_PORT", "29500")}
    else:
        return None
    rank, size, local = names
    if info["world_size"] < 1:
        raise LauncherEnvError(f"{size}={info['world_size']}: a job has at least one process")
    if not 0 <= info["rank"] < info["world_size"]:
        raise LauncherEnvError(f"{rank}={info['rank']} is not a rank of {size}={info['world_size']} (0 to {info['world_size'] - 1})")
    if info["local_rank"] < 0:
        raise LauncherEnvError(f"{local}={info['local_rank']} is negative")
    if not str(info["master_port"]).isdigit() or not 0 < int(info["master_port"]) < 65536:
        raise LauncherEnvError(f"MASTER_PORT={info['master_port']!r} is not a port number")
    return info


def launcher_world_size(env=os.environ) -> int:
    """The world size the launcher promises, read before any process group exists (so the batch
    split is checked first); 1 without a launcher."""
    info = launcher_env(env)
    return info["world_size"] if info else 1
