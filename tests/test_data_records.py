"""Shard patterns and bad records: every kind of bad input is skipped and counted by reason,
through the one-pass scan and through the multi-worker training loader."""
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipav2.config import load_config
from clipav2.stage import resolve
from clipav2.data import build_train_loader, expand_urls
from clipav2.data.scan import scan
from clipav2.data.shards import ShardSink
from clipav2.data.transforms import TrainTransform

from clipav2.parallel.env import World


def encode(img, fmt="JPEG"):
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def photo(seed, size=(48, 40)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def fake_text(caption, key):
    return torch.tensor([len(caption), len(key)], dtype=torch.long)


# (reason, record members) of each kind of bad record
def bad_records():
    jpeg = encode(photo(99, (64, 64)))
    bomb = Image.new("1", (20000, 20000))  # a real 20,000 x 20,000 image, ~60 kB as PNG
    return {
        "corrupt_image": {"jpg": jpeg[: len(jpeg) // 2], "txt": b"half a jpeg"},
        "not_an_image": {"jpg": b"<html>this is not an image</html>", "txt": b"html"},
        "image_too_small": {"png": encode(Image.new("RGB", (1, 1)), "PNG"), "txt": b"one pixel"},
        "image_too_large": {"png": encode(bomb, "PNG"), "txt": b"a decompression bomb"},
        "missing_caption": {"jpg": jpeg},
        "empty_caption": {"jpg": jpeg, "txt": b"  \n "},
        "bad_caption_encoding": {"jpg": jpeg, "txt": b"caf\xe9 \xff\xfe"},
        "missing_image": {"txt": b"a caption alone"},
    }


def write_shard(path, records):
    with tarfile.open(path, "w") as tar:
        for key, members in records:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """shard 0: 10 good records + one of each bad kind; shard 1: 6 good records then a cut."""
    d = tmp_path_factory.mktemp("bad")
    good = [(f"good{i:02d}", {"jpg": encode(photo(i)), "txt": f"photo number {i}".encode()}) for i in range(16)]
    bad = [(f"bad_{reason}", members) for reason, members in bad_records().items()]
    write_shard(d / "a.tar", good[:5] + bad + good[5:10])
    write_shard(d / "b.tar", good[10:] + [("cut", {"jpg": encode(photo(77, (200, 200))), "txt": b"lost"})])
    data = (d / "b.tar").read_bytes()
    (d / "b.tar").write_bytes(data[: data.index(b"lost") - 4096])  # inside the last record's image
    return d, {r: 1 for r in bad_records()} | {"truncated_tar": 1}, {k for k, _ in good}


def test_every_bad_record_is_counted_by_reason(bad_shards):
    d, expected, good = bad_shards
    report = scan(str(d), TrainTransform(32), fake_text)
    assert report["samples"] == len(good)
    assert report["skipped"] == expected


def test_loader_skips_bad_records_and_aggregates_counts_over_workers(bad_shards):
    d, expected, good = bad_shards
    cfg = load_config(None, [f"data.train={d}", "data.workers=2", "data.shuffle_buffer=4", "parallel.micro_batch=1",
                             "stages=[{name: s, image_size: 32, samples: 64, global_batch: 1}]"])
    loader = build_train_loader(cfg, resolve(cfg, 0, 1), World(0, 1), fake_text)
    first_epoch, before = [], loader.state_dict()["streams"]
    for batch in loader:
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (1, 3, 32, 32)
        after = loader.state_dict()["streams"]
        (changed,) = [a for a, b in zip(after, before) if a != b]  # the stream that delivered it
        if changed["epoch"] == 0:
            first_epoch += batch["keys"]
        if all(s["epoch"] >= 1 for s in after):
            break
        before = after
    assert sorted(first_epoch) == sorted(good)
    # every reason met in the first epoch, at least once per epoch read; nothing else
    assert set(loader.skipped) == set(expected)
    assert all(expected[r] <= loader.skipped[r] <= 2 * expected[r] for r in expected)
    loader.close()


def test_expand_urls_patterns(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:03d}.tar").write_bytes(b"")
    paths = [str(tmp_path / f"{i:03d}.tar") for i in range(3)]
    assert expand_urls(str(tmp_path / "{000..002}.tar")) == paths
    assert expand_urls(f"{paths[0]},{paths[2]}") == [paths[0], paths[2]]
    assert expand_urls(f"{paths[0]}::{paths[1]}") == paths[:2]
    assert expand_urls(str(tmp_path)) == paths
    assert expand_urls(str(tmp_path / "*.tar")) == paths
    assert expand_urls("pipe:cat /x/{0..1}.tar") == ["pipe:cat /x/0.tar", "pipe:cat /x/1.tar"]
    with pytest.raises(FileNotFoundError, match="2 of 4 shards"):
        expand_urls(str(tmp_path / "{001..004}.tar"))
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        os.mkdir(tmp_path / "empty")
        expand_urls(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_urls(str(tmp_path / "*.tgz"))
    with pytest.raises(ValueError, match="empty shard pattern"):
        expand_urls("  ")


def test_pattern_matching_nothing_stops_at_start_up(tmp_path):
    cfg = load_config(None, [f"data.train={tmp_path}/{{0..9}}.tar", "stages=[{name: s, samples: 64, global_batch: 64}]"])
    with pytest.raises(FileNotFoundError, match="10 of 10 shards"):
        build_train_loader(cfg, resolve(cfg, 0, 1), World(0, 1), fake_text)


def test_unreadable_pipe_shard_is_counted(tmp_path):
    report = scan("pipe:exit 3", TrainTransform(32), fake_text)
    assert report == {"samples": 0, "skipped": {"unreadable_shard": 1}, "shards": 1, "examples": []}


def test_shard_sink_refuses_to_mix_with_old_shards(tmp_path):
    with ShardSink(tmp_path) as sink:
        sink.write({"__key__": "a", "jpg": encode(photo(1)), "txt": "x"})
    with pytest.raises(FileExistsError):
        ShardSink(tmp_path)


def test_pipe_url_reads_like_the_file(bad_shards):
    d, expected, good = bad_shards
    direct = scan(str(d / "a.tar"), TrainTransform(32), fake_text)
    piped = scan(f"pipe:cat {d / 'a.tar'}", TrainTransform(32), fake_text)
    assert piped == direct and piped["samples"] == 10


def test_data_set_without_one_usable_record_stops_with_a_clear_error(tmp_path):
    (tmp_path / "0.tar").write_bytes(b"garbage, not a tar file" * 100)
    write_shard(tmp_path / "1.tar", [("k", {"jpg": b"not an image", "txt": b"caption"})])
    cfg = load_config(None, [f"data.train={tmp_path}", "data.workers=0", "parallel.micro_batch=1",
                             "stages=[{name: s, image_size: 32, samples: 64, global_batch: 1}]"])
    loader = build_train_loader(cfg, resolve(cfg, 0, 1), World(0, 1), fake_text)
    with pytest.raises(RuntimeError, match="3 epochs in a row without one usable sample"):
        next(iter(loader))
