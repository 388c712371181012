"""Records a 12.8B-sample stage eventually meets, through the real multi-worker loader and the real
tokenizer: huge captions (one word or many), oversized or sparse members, captions with nothing
visible, JPEG headers that promise more than their data, and every PIL mode's grey levels. Each
is skipped and counted by reason, or decoded right; nothing aborts."""
import io
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clipav2.config import load_config
from clipav2.data import build_train_loader
from clipav2.data.records import MAX_CAPTION_CHARS, BadRecord, caption, load_rgb, open_image
from clipav2.data.shards import iter_records
from clipav2.data.transforms import EvalTransform
from clipav2.parallel.env import World
from clipav2.stage import resolve
from clipav2.text import make_text_transform
from test_data_records import encode, photo, write_shard

HUGE = 50 * 2**20  # 50 MB


def lying_jpeg(side=7000):
    """16 x 16 pixels of JPEG data whose header claims side x side."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (200, 10, 10))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = side.to_bytes(2, "big") * 2
    return bytes(data)


def rare_records():
    """(reason or None for a good record, members) of each rare kind."""
    jpeg = encode(photo(5, (64, 64)))
    many_words = (b"a dog on a mat " * (HUGE // 15 + 1))[:HUGE]
    return {
        "huge_one_word": ("member_too_large", {"jpg": jpeg, "txt": b"x" * HUGE}),
        "huge_many_words": ("member_too_large", {"jpg": jpeg, "txt": many_words}),
        "huge_json": ("member_too_large", {"jpg": jpeg, "txt": b"fine", "json": b"[" * (2 << 20)}),
        "long_one_word": (None, {"jpg": jpeg, "txt": b"y" * 900_000}),
        "long_many_words": (None, {"jpg": jpeg, "txt": (b"a cat on a sofa " * 56_000)}),
        "controls": ("empty_caption", {"jpg": jpeg, "txt": bytes(range(1, 32)) + b"\x7f"}),
        "nuls": ("empty_caption", {"jpg": jpeg, "txt": b"\x00" * 40}),
        "zero_width": ("empty_caption", {"jpg": jpeg, "txt": "\u200b\u200c\u200d\ufeff\u2060 \u0301".encode()}),
        "lying_jpeg": ("corrupt_image", {"jpg": lying_jpeg(), "txt": b"seven thousand squared"}),
    }


@pytest.fixture(scope="module")
def rare_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("rare")
    good = [(f"good{i:02d}", {"jpg": encode(photo(i)), "txt": f"photo number {i}".encode()}) for i in range(8)]
    rare = [(key, members) for key, (_, members) in rare_records().items()]
    write_shard(d / "a.tar", good[:4] + rare[:5])
    write_shard(d / "b.tar", rare[5:] + good[4:])
    expected = {}
    for reason, _ in rare_records().values():
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    keys = {k for k, _ in good} | {k for k, (reason, _) in rare_records().items() if reason is None}
    return d, expected, keys


def test_rare_records_through_the_real_loader_with_two_workers(rare_shards):
    d, expected, good = rare_shards
    cfg = load_config(None, [f"data.train={d}", "data.workers=2", "data.shuffle_buffer=4", "parallel.micro_batch=1",
                             "stages=[{name: s, image_size: 32, samples: 64, global_batch: 1, text_len: 32}]"])
    stage = resolve(cfg, 0, 1)
    text = make_text_transform(stage, vocab=cfg.data.vocab, seed=0)
    loader = build_train_loader(cfg, stage, World(0, 1), text)
    first_epoch, before = [], loader.state_dict()["streams"]
    for batch in loader:
        assert batch["text"].shape == (1, 32)
        after = loader.state_dict()["streams"]
        (changed,) = [a for a, b in zip(after, before) if a != b]
        if changed["epoch"] == 0:
            first_epoch += batch["keys"]
        if all(s["epoch"] >= 1 for s in after):
            break
        before = after
    loader.close()
    print("skipped:", loader.skipped)
    assert sorted(first_epoch) == sorted(good)
    assert set(loader.skipped) == set(expected)
    assert all(expected[r] <= loader.skipped[r] <= 2 * expected[r] for r in expected)


def test_a_long_caption_is_cut_before_the_tokenizer():
    words = "a cat on a sofa " * 50_000
    assert len(caption({"txt": words.encode()})) == MAX_CAPTION_CHARS
    assert caption({"txt": "  \x00a dog\u200b  ".encode()}) == "\x00a dog\u200b"  # visible text is kept as it is
    for nothing in (b"\x00\x00", "\u200b\u2060".encode(), b"\t\r\n\x0b\x0c", b"\x1b\x07"):
        with pytest.raises(BadRecord, match="empty_caption"):
            caption({"txt": nothing})


def _sparse_member(name: str, claimed: int, stored: bytes) -> bytes:
    """A GNU sparse member (old format) of `claimed` bytes whose only data block is `stored`, at the
    end: tar writes a 1 TB file of holes this way in a few hundred bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.type = len(stored), tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = b"\x80" + (claimed - len(stored)).to_bytes(11, "big")  # entry 0: offset
    header[398:410] = b"%011o\0" % len(stored)  # entry 0: bytes
    header[483:495] = b"\x80" + claimed.to_bytes(11, "big")  # the real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + stored + b"\0" * (-len(stored) % 512)


def _member(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def test_a_sparse_member_claiming_a_terabyte_is_skipped_unread(tmp_path):
    jpeg = encode(photo(1, (16, 16)))
    shard = tmp_path / "sparse.tar"
    shard.write_bytes(_member("a.jpg", jpeg) + _member("a.txt", b"first") + _member("big.jpg", jpeg)
                      + _sparse_member("big.txt", 2**40, b"x" * 512) + _member("z.jpg", jpeg) + _member("z.txt", b"last")
                      + b"\0" * 1024)
    assert shard.stat().st_size < 16_000
    with tarfile.open(shard) as tar:
        assert tar.getmember("big.txt").size == 2**40  # what tarfile would try to read
    events = []
    records = dict(iter_records(str(shard), events))
    assert events == [] and set(records) == {"a", "big", "z"}
    assert records["z"]["txt"] == b"last"
    with pytest.raises(BadRecord, match="member_too_large"):
        caption(records["big"])


def test_a_member_claiming_a_terabyte_in_a_short_file_ends_the_shard(tmp_path):
    info = tarfile.TarInfo("big.txt")
    info.size = 2**40
    shard = tmp_path / "short.tar"
    shard.write_bytes(_member("a.jpg", b"j") + _member("a.txt", b"first") + info.tobuf(format=tarfile.GNU_FORMAT) + b"x" * 8000)
    events = []
    assert [k for k, _ in iter_records(str(shard), events)] == ["a"]
    assert events == ["truncated_tar"]


def test_a_jpeg_header_larger_than_its_data_is_refused_but_a_flat_large_jpeg_is_not():
    with pytest.raises(BadRecord, match="corrupt_image: truncated"):
        open_image(lying_jpeg())
    for progressive in (False, True):  # the smallest honest JPEGs: one flat grey, 12 MP
        buf = io.BytesIO()
        Image.new("L", (4000, 3000), 128).save(buf, "JPEG", quality=1, progressive=progressive)
        assert open_image(buf.getvalue()).size == (4000, 3000)


G16 = 40_000  # a 16-bit grey level: 8-bit round(40000 / 257) = 156


def _grey(mode):
    """(image of `mode`, a file format that stores it, the 8-bit grey it must decode to)."""
    side = (16, 16)
    table = {
        "1": (Image.new("1", side, 1), "PNG", 255),
        "L": (Image.new("L", side, 77), "PNG", 77),
        "LA": (Image.new("LA", side, (77, 9)), "PNG", 77),
        "P": (Image.new("L", side, 77).convert("P"), "PNG", 77),
        "RGBA": (Image.new("RGBA", side, (77, 77, 77, 0)), "PNG", 77),
        "I;16": (Image.frombytes("I;16", side, np.full(side, G16, "<u2").tobytes()), "PNG", 156),
        "I;16B": (Image.frombytes("I;16B", side, np.full(side, G16, ">u2").tobytes()), "TIFF", 156),
        "I;16L": (Image.frombytes("I;16", side, np.full(side, G16, "<u2").tobytes()), "TIFF", 156),
        "I": (Image.frombytes("I", side, np.full(side, G16, "=i4").tobytes()), "TIFF", 156),
        "F": (Image.frombytes("F", side, np.full(side, 0.5, "=f4").tobytes()), "TIFF", 128),
        "CMYK": (Image.new("CMYK", side, (0, 0, 0, 255 - 77)), "TIFF", 77),
    }
    return table[mode]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "I;16", "I;16B", "I;16L", "I", "F", "CMYK"])
def test_every_mode_read_from_a_file_decodes_to_its_grey_level(mode):
    img, fmt, grey = _grey(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    opened = open_image(buf.getvalue())
    got = np.asarray(load_rgb(opened))
    assert (got == grey).all(), (mode, opened.mode, np.unique(got))
    tensor = EvalTransform(8, kind="resize")(buf.getvalue())  # the eval decode path too
    assert tensor.dtype == torch.uint8 and (tensor == grey).all(), mode
    assert math.isclose(float(tensor.float().mean()), grey)
