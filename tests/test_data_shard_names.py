"""Shard members: two consecutive records with the same key are counted (duplicate_key), never
merged; `clipav2 data shards` refuses keys that would make member names absolute or climb out
with '..' (skipped and counted as unsafe_key; the writer itself raises)."""
import io
import json
import subprocess
import sys
import tarfile

import pytest
from PIL import Image

from clipav2.data.shards import ShardSink, iter_records


def _jpg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_consecutive_records_with_one_key_are_counted_not_merged(tmp_path):
    first, second = _jpg("red"), _jpg("blue")
    _tar(tmp_path / "s.tar", [("a.jpg", first), ("a.txt", b"one"), ("a.jpg", second), ("a.txt", b"two"),
                              ("b.jpg", second), ("b.txt", b"three")])
    events = []
    records = list(iter_records(str(tmp_path / "s.tar"), events))
    assert [k for k, _ in records] == ["a", "b"]
    assert records[0][1] == {"jpg": first, "txt": b"one"}  # the first a, untouched by the second
    assert events == ["duplicate_key"]
    # split over two readers (ranks / workers): the same records, the duplicate counted once
    halves = [([], []) for _ in range(2)]
    for sub, (ev, out) in enumerate(halves):
        out.extend(k for k, _ in iter_records(str(tmp_path / "s.tar"), ev, sub, 2))
    assert sorted(halves[0][1] + halves[1][1]) == ["a", "b"]
    assert halves[0][0] + halves[1][0] == ["duplicate_key"]


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../../b", "..", "C:/x", "..\\x", ""])
def test_the_writer_refuses_unsafe_member_names(tmp_path, key):
    with ShardSink(tmp_path) as sink, pytest.raises(ValueError, match="relative path without '..'"):
        sink.write({"__key__": key, "jpg": _jpg("red"), "txt": "x"})


def test_data_shards_skips_and_counts_unsafe_keys(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "1.jpg").write_bytes(_jpg("red"))
    rows = [{"key": "../../evil", "image": "1.jpg", "caption": "a red square"},
            {"key": "/etc/evil", "image": "1.jpg", "caption": "a red square"},
            {"key": "fine/000", "image": "1.jpg", "caption": "a red square"}]
    (tmp_path / "src" / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = subprocess.run([sys.executable, "-m", "clipav2", "data", "shards", str(tmp_path / "src" / "c.jsonl"),
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == 1 and manifest["skipped"] == {"unsafe_key": 2}
    with tarfile.open(tmp_path / "out" / manifest["shards"][0]) as tar:
        assert sorted(tar.getnames()) == ["fine/000.jpg", "fine/000.txt"]
