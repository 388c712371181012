"""Shared pieces of the training tests: a small demo data set (generated once per session) and a
tiny two-stage recipe over it, shaped like configs/demo.yaml."""
import os
import socket
from pathlib import Path

import yaml

# The offline text data the subprocesses need, as the README has the user export it.
ENV = {k: os.environ[k] for k in ("NLTK_DATA", "CLIPAV2_VOCAB") if k in os.environ}


def free_port() -> str:
    """A TCP port free now on this host, for a process group's rendezvous (--master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def small_demo(tmp_path_factory, n_train=768, n_eval=144) -> Path:
    """OUT/train and OUT/eval of the demo generator, written once per test session."""
    root = tmp_path_factory.getbasetemp() / f"demo_data_{n_train}_{n_eval}"
    if not (root / "eval" / "manifest.json").is_file():
        from clipav2.data.demo import write_demo

        write_demo(root, seed=0, n_train=n_train, n_eval=n_eval, shard_size=256)
    return root


def tiny_recipe(path: Path, data: Path, run_dir: Path, **changes) -> Path:
    """configs/demo.yaml with the tiny model and a few steps per stage; `changes` are dotted keys."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "demo.yaml").read_text())
    raw.update(run_dir=str(run_dir))
    raw["model"] = {"name": "tiny"}
    raw["data"].update(demo=False, train=str(data / "train"), eval=str(data / "eval"), workers=0, shuffle_buffer=64)
    raw["parallel"].update(micro_batch=16)
    raw["log"].update(every_steps=2, progress=False, tensorboard=True)
    raw["eval"] = {"batch_size": 72}
    pre, fine = raw["stages"]
    pre.update(image_size=16, samples=64, global_batch=16, warmup_steps=1)
    fine.update(image_size=32, samples=64, global_batch=16, warmup_steps=1, text_len=16)
    for dotted, value in changes.items():
        node = raw
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = next(s for s in node if s["name"] == p) if isinstance(node, list) else node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
