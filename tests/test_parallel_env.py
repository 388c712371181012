"""clipav2/parallel/env.py: the launchers' environments (torchrun, SLURM) read into a rank, a world
size and a rendezvous."""
from clipav2.parallel.env import first_host, launcher_env


def test_launcher_environments():
    assert launcher_env({}) is None
    torchrun = launcher_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (torchrun["rank"], torchrun["world_size"], torchrun["local_rank"]) == (3, 4, 1)
    slurm = launcher_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_NODELIST": "gpu[07-08]"})
    assert (slurm["rank"], slurm["world_size"], slurm["local_rank"], slurm["master_addr"]) == (5, 16, 5, "gpu07")
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # an salloc shell
    assert first_host("a1,b2") == "a1" and first_host("n[3,5-6]") == "n3"
