"""tools/gpu_check.sh: the CPU smoke run goes through the whole script (tests, every row, the
records), and the wheels it carries install offline for the GPU image's Python 3.12."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow  # multi-process or a whole training run

ROOT = Path(__file__).parents[1]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "tools"))  # gpu_check_rows imports gpu_check_report
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return module


wheels = _tool("gpu_check_wheels")
rows = _tool("gpu_check_rows")


def test_cpu_smoke_runs_every_row_and_records_it(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CPU_SMOKE="1", OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), GPU_CHECK_SITE=str(tmp_path / "site"))
    # the compiled rows build their graphs on the CPU inductor (one cold build per checkpointing
    # variant, minutes on 2 cores; the later rows load them from the cache)
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["env.md", "log.txt", "rows.jsonl", "table.md", "tests.txt"]
    recorded = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    names = [name for name, _, _ in rows.ROWS]
    assert [r["row"] for r in recorded if r["trainer"] == "clipav2"] == names, recorded
    assert {r["row"] for r in recorded if r["trainer"] == "open_clip"} == {"h14_84", "h14_224_mask03"}
    for r in recorded:
        assert r["error"] is None and r["samples_per_s"] > 0 and r["peak_memory_gib"] > 0, r
        assert r["flags"]["sdpa_kernels"].startswith("flash (cpu) x"), r["flags"]  # torch's CPU kernel
    flags = {r["row"]: r["flags"] for r in recorded if r["trainer"] == "clipav2"}
    compiled = [n for n, _, template in rows.ROWS if "{compile}" in template]
    assert compiled and all(flags[n]["compile"] and "compile_s" in flags[n] for n in compiled), flags
    assert not flags["h14_84"]["compile"]
    assert flags["h14_84_compiled_bf16m"]["bf16_momentum"] and not flags["h14_84_compiled"]["bf16_momentum"]
    assert flags["h14_224_mask03"]["checkpointing"] == "every_2" and flags["bigg_84_fsdp"]["strategy"] == "fsdp"
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(recorded) and all(f"| {n} |" in "\n".join(table) for n in names)
    assert "torch " in (out / "env.md").read_text()
    assert "SKIPPED" in (out / "tests.txt").read_text() and "needs a CUDA device" in (out / "tests.txt").read_text()
    assert not (out / "inductor").exists()


def _reachable_fetch(folder: Path):
    """Fetch the wheels, or skip when the package index cannot be reached (a pin that does not
    exist, or a wheel missing for the target, still fails)."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check_wheels.py"), "fetch", str(folder)],
                          capture_output=True, text=True, timeout=300)
    offline = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
               "ConnectTimeout", "ProxyError", "Max retries exceeded")
    if done.returncode and any(s in done.stdout + done.stderr for s in offline):
        pytest.skip("the package index is unreachable from here")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_carried_wheels_install_offline_for_the_gpu_image(tmp_path):
    folder = tmp_path / "wheels"
    _reachable_fetch(folder)
    assert sorted(wheels.wheel_name(w) for w in folder.glob("*.whl")) == sorted(map(wheels.pin_name, wheels.PINS))
    # pip resolves the set for CPython 3.12 x86-64 from the folder alone, as the GPU machine will
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's own find-links and indexes do not count
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                           str(folder), "--no-deps", "--only-binary=:all:", *wheels.TARGET, "--target",
                           str(tmp_path / "site"), *wheels.PINS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    would = next(line for line in done.stdout.splitlines() if line.startswith("Would install"))
    assert sorted(would.split()[2:]) == sorted(p.replace("==", "-") for p in wheels.PINS)
    # and with --no-deps nothing is left out: every requirement is carried or the image's
    have = set(map(wheels.pin_name, wheels.PINS)) | set(map(wheels.canonical, wheels.IMAGE))
    marker_env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    for whl in folder.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        for line in meta.splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is None or req.marker.evaluate(marker_env):
                    assert wheels.canonical(req.name) in have, f"{whl.name} needs {req}, neither carried nor the image's"
