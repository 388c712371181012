"""Soak the data path with the rare records a long stage eventually meets: generates shards of a
few thousand records, a share of them rare (huge or empty captions, odd encodings, truncated or
lying images, odd PIL modes, a sparse member claiming 1 TB), streams one epoch of them through the
training loader (real tokenizer, loader workers) and prints the counts by reason beside what
the generator planted. Exit 1 if they differ.

    python tools/soak_records.py                          # 3,000 records, 10% rare, 2 workers
    python tools/soak_records.py --records 10000 --rare 0.2 --workers 2 --json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(rng: random.Random, side=48) -> Image.Image:
    a = np.random.default_rng(rng.randrange(2**32)).integers(0, 255, (side, side + 8, 3), dtype=np.uint8)
    return Image.fromarray(a)


def _lying_jpeg(rng) -> bytes:
    data = bytearray(_encode(_photo(rng, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = (7000).to_bytes(2, "big") * 2
    return bytes(data)


def _odd_mode(rng) -> bytes:
    """An image in an unusual PIL mode and file format (each decodes, to the right grey levels)."""
    side = (24, 24)
    grey16 = np.full(side, rng.randrange(65536), ">u2")
    kinds = [
        lambda: _encode(Image.frombytes("I;16B", side, grey16.tobytes()), "TIFF"),
        lambda: _encode(Image.frombytes("I;16", side, grey16.astype("<u2").tobytes()), "PNG"),
        lambda: _encode(Image.new("F", side, rng.random()), "TIFF"),
        lambda: _encode(_photo(rng).convert("CMYK"), "JPEG"),
        lambda: _encode(_photo(rng).convert("P"), "PNG"),
        lambda: _encode(_photo(rng).convert("LA"), "PNG"),
        lambda: _encode(_photo(rng).convert("1"), "PNG"),
        lambda: _encode(_photo(rng).convert("RGBA"), "WEBP"),
    ]
    return rng.choice(kinds)()


def _rare(rng: random.Random):
    """(planted reason or None for a usable record, members)."""
    jpeg = _encode(_photo(rng), "JPEG", quality=85)
    kinds = {
        "huge_caption_one_word": lambda: ("member_too_large", {"jpg": jpeg, "txt": b"w" * (3 << 20)}),
        "huge_caption_words": lambda: ("member_too_large", {"jpg": jpeg, "txt": b"a big dog " * 300_000}),
        "huge_json": lambda: ("member_too_large", {"jpg": jpeg, "txt": b"ok", "json": b"{" + b" " * (2 << 20) + b"}"}),
        "long_caption": lambda: (None, {"jpg": jpeg, "txt": b"a long caption " * 40_000}),
        "whitespace": lambda: ("empty_caption", {"jpg": jpeg, "txt": b" \t\n "}),
        "nul": lambda: ("empty_caption", {"jpg": jpeg, "txt": b"\x00" * rng.randrange(1, 64)}),
        "zero_width": lambda: ("empty_caption", {"jpg": jpeg, "txt": "\u200b\ufeff\u2060".encode()}),
        "controls": lambda: ("empty_caption", {"jpg": jpeg, "txt": bytes(range(1, 32))}),
        "latin1": lambda: ("bad_caption_encoding", {"jpg": jpeg, "txt": "café crème brûlée".encode("latin-1")}),
        "utf16": lambda: ("bad_caption_encoding", {"jpg": jpeg, "txt": "a dog on a mat".encode("utf-16")}),
        "no_caption": lambda: ("missing_caption", {"jpg": jpeg}),
        "no_image": lambda: ("missing_image", {"txt": b"a caption alone"}),
        "cut_jpeg": lambda: ("corrupt_image", {"jpg": jpeg[: len(jpeg) // 2], "txt": b"half"}),
        "lying_jpeg": lambda: ("corrupt_image", {"jpg": _lying_jpeg(rng), "txt": b"seven thousand squared"}),
        "html": lambda: ("not_an_image", {"jpg": b"<html>404</html>", "txt": b"html"}),
        "tiny": lambda: ("image_too_small", {"png": _encode(Image.new("RGB", (2, 2)), "PNG"), "txt": b"tiny"}),
        "odd_mode": lambda: (None, {"png": _odd_mode(rng), "txt": b"an odd mode"}),
    }
    name = rng.choice(sorted(kinds))
    return name, *kinds[name]()


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512)


def _sparse_caption(key: str) -> bytes:
    """A GNU sparse member claiming 1 TB over one 512-byte block (a 12 kB tar can hold it)."""
    claimed = 1 << 40
    info = tarfile.TarInfo(f"{key}.txt")
    info.size, info.type = 512, tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = b"\x80" + (claimed - 512).to_bytes(11, "big")
    header[398:410] = b"%011o\0" % 512
    header[483:495] = b"\x80" + claimed.to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + b"x" * 512


def write_shards(out: Path, n: int, rare: float, per_shard: int, seed: int):
    """Shards of `n` records; returns (planted {reason: count}, usable records, rare kinds used)."""
    rng = random.Random(seed)
    planted, kinds, usable = Counter(), Counter(), 0
    for first in range(0, n, per_shard):
        parts = []
        for i in range(first, min(n, first + per_shard)):
            key = f"r{i:07d}"
            if rng.random() < rare and i < min(n, first + per_shard) - 1:  # a shard ends on a usable record
                if rng.random() < 0.02:  # the sparse 1 TB caption: a member tarfile alone would read whole
                    parts += [_member(f"{key}.jpg", _encode(_photo(rng), "JPEG")), _sparse_caption(key)]
                    planted["member_too_large"] += 1
                    kinds["sparse_1tb_caption"] += 1
                    continue
                kind, reason, members = _rare(rng)
                kinds[kind] += 1
            else:
                reason, members = None, {"jpg": _encode(_photo(rng), "JPEG", quality=85), "txt": f"photo {i}".encode()}
            planted[reason] += reason is not None
            usable += reason is None
            parts += [_member(f"{key}.{ext}", data) for ext, data in members.items()]
        (out / f"{first // per_shard:05d}.tar").write_bytes(b"".join(parts) + b"\0" * 1024)
    return {k: v for k, v in planted.items() if v}, usable, dict(kinds)


def soak(args) -> dict:
    from clipav2.config import load_config
    from clipav2.data import build_train_loader
    from clipav2.parallel.env import World
    from clipav2.stage import resolve
    from clipav2.text import make_text_transform

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        planted, usable, kinds = write_shards(Path(tmp), args.records, args.rare, args.per_shard, args.seed)
        written = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.tar"))
        # shuffle buffer 1 and one record per batch, every shard ending on a usable record: the last
        # epoch-0 state of each stream then holds exactly that epoch's counts
        cfg = load_config(None, [f"data.train={tmp}", f"data.workers={args.workers}", "data.shuffle_buffer=1",
                                 "parallel.micro_batch=1", "stages=[{name: s, image_size: 64, samples: 64, global_batch: 1}]"])
        stage = resolve(cfg, 0, 1)
        text = make_text_transform(stage, vocab=cfg.data.vocab, seed=0)
        loader = build_train_loader(cfg, stage, World(0, 1), text)
        t1, delivered, last0 = time.perf_counter(), 0, {}
        before = loader.state_dict()["streams"]
        for _batch in loader:  # one epoch: until every stream has moved on to epoch 1
            streams = loader.state_dict()["streams"]
            delivered += any(a != b and a["epoch"] == 0 for a, b in zip(streams, before))
            last0.update({i: st["skipped"] for i, st in enumerate(streams) if st["epoch"] == 0})
            if all(st["epoch"] >= 1 for st in streams):
                break
            before = streams
        streamed = time.perf_counter() - t1
        loader.close()
        skipped = Counter()
        for counts in last0.values():
            skipped.update(counts)
    return {"records": args.records, "rare_share": args.rare, "workers": args.workers, "shards_bytes": size,
            "planted": dict(sorted(planted.items())), "skipped": dict(sorted(skipped.items())),
            "usable_planted": usable, "usable_delivered": delivered, "rare_kinds": dict(sorted(kinds.items())),
            "write_seconds": round(written, 1), "stream_seconds": round(streamed, 1),
            "records_per_second": round(args.records / max(streamed, 1e-9), 1),
            "peak_rss_mib_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_rss_mib_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--rare", type=float, default=0.1, help="share of rare records")
    p.add_argument("--per-shard", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = soak(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    same = result["planted"] == result["skipped"] and result["usable_planted"] == result["usable_delivered"]
    print("counts by reason match what was planted" if same else "MISMATCH between planted and counted", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
