"""The wheels the GPU check carries to a GPU machine without network, and their install there.

    python tools/gpu_check_wheels.py fetch wheels          # here, with the package index
    python tools/gpu_check_wheels.py install wheels SITE   # there: only what the image lacks

The GPU image (Python 3.12, torch + CUDA, triton, timm, numpy, pytest, safetensors, tokenizers)
runs every GPU test and our rows as it is; only the open_clip baseline needs more. Each wheel is
pinned and installed with --no-deps into SITE (put it on PYTHONPATH), and only where the image
has no distribution of that name, so nothing the image ships is replaced. The requirements of
these wheels that are not pinned here are the image's own (IMAGE).
"""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

PINS = (
    "open_clip_torch==3.3.0",  # the baseline rows
    "ftfy==6.3.1",  # open_clip's tokenizer imports it
    "wcwidth==0.9.4",  # ftfy imports it
    "regex==2026.11.19",  # open_clip's tokenizer imports it (most images have it: then not installed)
)
# open_clip's other requirements; the image has them (timm brings huggingface-hub, tqdm, safetensors)
IMAGE = ("torch", "torchvision", "timm", "huggingface-hub", "safetensors", "tqdm")

# the target the wheels are for: the GPU image's CPython 3.12 on x86-64 Linux
TARGET = ("--python-version", "3.12", "--implementation", "cp",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux2014_x86_64")


def canonical(name: str) -> str:
    """PEP 503 name: lower case, runs of - _ . as one '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pin_name(pin: str) -> str:
    return canonical(pin.split("==")[0])


def wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def fetch(folder: Path) -> int:
    """Download exactly the pinned wheels for the target into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *TARGET,
           "-d", str(folder), *PINS]
    return subprocess.call(cmd)


def _installed(pin: str) -> bool:
    try:
        importlib.metadata.version(pin.split("==")[0])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def missing() -> list[str]:
    """The pins whose distribution this interpreter does not have."""
    return [p for p in PINS if not _installed(p)]


def install(folder: Path, site: Path) -> int:
    need = missing()
    if not need:
        print("gpu_check: the image has every package the check needs; nothing to install")
        return 0
    wheels = {wheel_name(w): w for w in folder.glob("*.whl")} if folder.is_dir() else {}
    absent = [p for p in need if pin_name(p) not in wheels]
    if absent:
        print(f"gpu_check: {', '.join(absent)} missing from {folder}/ "
              "(run tools/gpu_check.sh --fetch-wheels where there is network, and carry the folder)", file=sys.stderr)
        return 1
    files = [str(wheels[pin_name(p)]) for p in need]
    print(f"gpu_check: installing {', '.join(need)} into {site}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--root-user-action=ignore", "--upgrade", "--target", str(site), *files]
    return subprocess.call(cmd)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "fetch":
        return fetch(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "install":
        return install(Path(argv[1]), Path(argv[2]))
    print("usage: gpu_check_wheels.py fetch FOLDER | install FOLDER SITE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
