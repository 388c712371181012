"""The demo data set, the `clipav2 data` commands, shard building and zero-shot eval input."""
import csv
import io
import json
import os
import random
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipav2.data import demo
from clipav2.data.make import make_shards
from clipav2.eval.sets import classification_batches, classnames, templates


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo.write_demo(out, seed=3, n_train=300, n_eval=60, shard_size=128)
    return out


def members(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def cli(*args):
    """`clipav2 data ...` in a fresh interpreter (as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "clipav2", "data", *map(str, args)], capture_output=True, text=True)


def cli_here(capsys, *args):
    """`clipav2 data ...` in this process (saves a torch import per call): (rc, stdout, stderr)."""
    from clipav2.cli import main

    rc = main(["data", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_captions_describe_the_scene():
    rng = random.Random(0)
    for _ in range(500):
        scene = demo.random_scene(rng, rng.randint(1, 4))
        text = demo.caption(scene)
        words = text.split()
        assert 5 <= len(words) <= 30, text
        main = scene["objects"][0]
        # the main object leads: colour and shape first, its size in the bracket after them
        assert words[1] == main["color"] and words[2].startswith(main["shape"]), text
        assert words[3].strip("(,)") == main["size"], text
        assert all(o["color"] in words and any(w.startswith(o["shape"]) for w in words) for o in scene["objects"]), text
        # neither the background nor the places: they would tell captions apart without the shapes
        assert scene["background"] not in words and not {"left", "right", "top", "bottom", "middle"} & set(words), text


def test_demo_is_deterministic_and_labelled(demo_dir, tmp_path):
    again = tmp_path / "again"
    demo.write_demo(again, seed=3, n_train=300, n_eval=60, shard_size=128)
    assert members(demo_dir / "train" / "000001.tar") == members(again / "train" / "000001.tar")
    assert len(list((demo_dir / "train").glob("*.tar"))) == 3
    names = (demo_dir / "eval" / "classnames.txt").read_text().split("\n")[:-1]
    assert names == classnames("demo") == demo.classnames() and len(names) == 36
    for name, data in members(demo_dir / "eval" / "000000.tar").items():
        if name.endswith(".json"):
            meta = json.loads(data)
            label = int(members(demo_dir / "eval" / "000000.tar")[name.replace(".json", ".cls")])
            assert names[label] == meta["classname"] == f"{meta['color']} {meta['shape']}"
            break


def test_demo_colours_are_in_the_pixels(demo_dir):
    """The held-out label's colour covers a patch of its image (pixels nearest to that palette
    entry among all object and background colours): the pictures carry what the labels say."""
    palette = {**demo.COLORS, **{f"bg {k}": v for k, v in demo.BACKGROUNDS.items()}}
    names, table = list(palette), torch.tensor(list(palette.values()), dtype=torch.float)
    hits = n = 0
    for images, labels in classification_batches(str(demo_dir / "eval"), 64, "resize", batch_size=60):
        for img, label in zip(images, labels):
            px = img.permute(1, 2, 0).reshape(-1, 1, 3).float()
            dist = ((px - table) ** 2).sum(-1).sqrt()
            nearest = dist.argmin(1)
            colour = names.index(demo.classnames()[label].split()[0])
            hits += int(((nearest == colour) & (dist.min(1).values < 60)).sum() >= 12)
            n += 1
    assert n == 60 and hits / n > 0.9


def test_zero_shot_names_and_templates_match_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from clipav2.eval.sets import IMAGENET_CLASSNAMES as OURS

    assert classnames("imagenet") == list(IMAGENET_CLASSNAMES) == list(OURS) and len(OURS) == 1000
    assert [t.format("dog") for t in templates("imagenet")] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]
    assert all("{}" in t for t in templates("demo"))
    with pytest.raises(FileNotFoundError):
        classnames("no-such-list")


def test_image_folder_eval_input(tmp_path):
    for c, cls in enumerate(["cat", "dog"]):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (50 + i, 40), (c * 200, 0, 0)).save(tmp_path / cls / f"{i}.jpg")
    batches = list(classification_batches(str(tmp_path), 32, "center_crop", batch_size=4))
    labels = torch.cat([b[1] for b in batches])
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and batches[0][0].shape == (4, 3, 32, 32)
    assert batches[0][0].dtype == torch.uint8


def test_cli_demo_then_inspect(tmp_path, capsys, monkeypatch):
    out = tmp_path / "d"
    r = cli("demo", out, "--train", 150, "--eval", 20)
    assert r.returncode == 0, r.stderr
    monkeypatch.delenv("CLIPAV2_VOCAB", raising=False)  # a fresh machine: no vocabulary, no network
    rc, stdout, err = cli_here(capsys, "inspect", out / "train", "--json")
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["samples"] == 150 and report["skipped"] == {}
    assert report["examples"][0]["image"] == [3, 224, 224]
    rc, stdout, err = cli_here(capsys, "inspect", out / "eval")
    assert rc == 0 and stdout.startswith("20 good samples") and "skipped: 0" in stdout
    rc, _, err = cli_here(capsys, "inspect", tmp_path / "nothing" / "{0..3}.tar")
    assert rc == 2 and "do not exist" in err


def test_cli_inspect_uses_the_stage_and_tokenizes(tmp_path, demo_dir, capsys):
    assert os.environ.get("CLIPAV2_VOCAB"), "set CLIPAV2_VOCAB to the bert-base-uncased vocabulary (see README)"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stages:\n  - {name: pre, image_size: 48, text_len: 8, text_reduction: syntax, samples: 64, global_batch: 64}\n")
    rc, stdout, err = cli_here(capsys, "inspect", demo_dir / "eval", "--config", cfg, "--json", "--examples", 1)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["samples"] == 60 and report["examples"][0]["image"] == [3, 48, 48]
    assert len(report["examples"][0]["text_ids"]) == 8


def test_make_shards_from_a_captions_table_with_resize(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(src / f"{i}.jpg", quality=90)
        rows.append({"file": f"{i}.jpg", "caption": f"picture {i}" if i != 4 else ""})
    rows.append({"file": "missing.jpg", "caption": "gone"})
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    rows.append({"file": "bad.jpg", "caption": "broken"})
    with open(src / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    manifest = make_shards(src, tmp_path / "out", resize=112, shard_size=4)
    assert manifest["samples"] == 5 and len(manifest["shards"]) == 2
    assert manifest["skipped"] == {"empty_caption": 1, "missing_image": 1, "not_an_image": 1}
    got = members(tmp_path / "out" / "000000.tar")
    img = Image.open(io.BytesIO(got["000000000.jpg"]))
    assert img.size == (149, 112) and got["000000000.txt"] == b"picture 0"
    # re-sharding shards (the pre-resize path for an img2dataset set) through the CLI
    r = cli("shards", tmp_path / "out", tmp_path / "small", "--resize", 56, "--workers", 2)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "small" / "manifest.json").read_text())["samples"] == 5
