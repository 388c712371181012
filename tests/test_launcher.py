"""clipav2/launcher.py: the launchers' environments (torchrun, SLURM) read into a rank, a world
size and a rendezvous."""
import pytest

from clipav2.launcher import LauncherEnvError, first_host, launcher_env, launcher_world_size


def test_launcher_environments():
    assert launcher_env({}) is None
    torchrun = launcher_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (torchrun["rank"], torchrun["world_size"], torchrun["local_rank"]) == (3, 4, 1)
    slurm = launcher_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_NODELIST": "gpu[07-08]"})
    assert (slurm["rank"], slurm["world_size"], slurm["local_rank"], slurm["master_addr"]) == (5, 16, 5, "gpu07")
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # an salloc shell
    assert first_host("a1,b2") == "a1" and first_host("n[3,5-6]") == "n3"


def test_the_world_size_checked_first_follows_the_same_rules():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_NODELIST": "gpu[07-08]"}
    assert launcher_world_size(slurm) == launcher_env(slurm)["world_size"] == 16
    assert launcher_world_size({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "RANK": "1", "WORLD_SIZE": "2"}) == 2  # torchrun's
    assert launcher_world_size({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == 1  # an salloc shell
    assert launcher_world_size({"SLURM_NTASKS": "4"}) == 1  # no task of a step: no launcher
    with pytest.raises(LauncherEnvError, match="RANK"):  # half a launcher's environment
        launcher_world_size({"WORLD_SIZE": "2"})
    assert launcher_world_size({}) == 1
