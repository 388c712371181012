"""Unusable weights files are one line naming the file, exit 2, and never execute code: bad
safetensors (not one, a huge or bad-offset header), a pickle given to `eval --checkpoint` or
`init_from`; and a data set whose only shard is unusable."""
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipav2.models.weights_file import WeightsFileError, check_safetensors
from test_checkpoint_attacks import _env, _train
from support import small_demo, tiny_recipe


def _header_file(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _bad_files(tmp_path):
    files = {}
    files["not_safetensors"] = tmp_path / "a.safetensors"
    files["not_safetensors"].write_bytes(b"PK\x03\x04 this is a zip, or anything else" * 10)
    files["huge_header"] = tmp_path / "b.safetensors"
    files["huge_header"].write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    files["bad_offsets"] = tmp_path / "c.safetensors"
    _header_file(files["bad_offsets"], {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}, b"\0" * 16)
    files["offsets_vs_shape"] = tmp_path / "d.safetensors"
    _header_file(files["offsets_vs_shape"], {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 16]}}, b"\0" * 16)
    files["short"] = tmp_path / "e.safetensors"
    files["short"].write_bytes(b"\x01\x02")
    return files


@pytest.mark.parametrize("kind", ["not_safetensors", "huge_header", "bad_offsets", "offsets_vs_shape", "short"])
def test_bad_safetensors_are_named_in_one_line(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(Exception):
        load_file(str(path))  # the library agrees the file is bad
    with pytest.raises(WeightsFileError) as e:
        check_safetensors(path)
    assert str(e.value).startswith(f"{path}: not a usable safetensors file: ") and "\n" not in str(e.value)


def test_a_good_file_passes(tmp_path):
    save_file({"w": torch.ones(3, 2), "b": torch.zeros(0)}, str(tmp_path / "ok.safetensors"), metadata={"k": "v"})
    check_safetensors(tmp_path / "ok.safetensors")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _eval(checkpoint, data):
    recipe = tiny_recipe(checkpoint.parent / "eval.yaml", data, checkpoint.parent / "unused")
    cmd = [sys.executable, "-m", "clipav2", "eval", str(recipe), "--checkpoint", str(checkpoint)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_eval_refuses_bad_files_in_one_line(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, evil)
    for path in [evil, _bad_files(tmp_path)["huge_header"]]:
        r = _eval(path, data)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and lines[0].startswith("clipav2 eval: "), r.stderr[-3000:]
    assert not marker.exists()
    assert "posix.system" in _eval(evil, data).stderr


@pytest.mark.slow
def test_init_from_a_pickle_or_bad_header_is_one_line(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(marker), evil)
    for path in [evil, _bad_files(tmp_path)["bad_offsets"]]:
        run = tmp_path / f"run_{path.stem}"
        recipe = tiny_recipe(tmp_path / "r.yaml", data, run, **{"stages.pretrain.init_from": str(path)})
        r = _train(recipe, run)
        assert r.returncode == 2, r.stderr[-3000:]
        lines = [x for x in r.stderr.splitlines() if x.startswith("clipav2 train:")]
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.slow
def test_a_data_set_whose_only_shard_is_unusable(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    shard = tmp_path / "only.tar"
    shard.write_bytes(os.urandom(4096))
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", data, run, **{"data.train": str(shard), "data.workers": 1})
    r = _train(recipe, run)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.startswith("clipav2 train:")]
    assert len(lines) == 1 and str(shard) in lines[0] and "unreadable_shard" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
