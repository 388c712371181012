"""Building shards from a user's data (`clipav2 data shards SRC OUT`).

SRC is one of:
- a captions table (.csv, .tsv, .jsonl) with an image column (image|file|filename|path|filepath,
  relative to the table's directory) and a caption column (caption|text|txt|title);
- a directory holding one such table, or images with a caption beside each (`a.jpg` + `a.txt`);
- an img2dataset parquet (columns jpg + caption [+ key]; needs pyarrow);
- existing shards (a pattern or directory of .tar), e.g. to pre-resize them for a low-res stage.

`--resize PX` shrinks the short side to PX (never enlarges) and re-encodes as JPEG, so a
pre-training stage at 84 px reads ~112 px files. Unusable images and captions are skipped and
counted in OUT/manifest.json.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

from clipav2.data.records import IMAGE_EXTS, BadRecord, caption, image_bytes, load_rgb, open_image
from clipav2.data.shards import ShardSink, expand_urls, iter_records, unsafe_member_name

IMAGE_COLUMNS = ("image", "file", "filename", "path", "filepath")
CAPTION_COLUMNS = ("caption", "text", "txt", "title")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def _column(row: dict, names, table) -> str:
    for name in names:
        if name in row:
            return name
    raise ValueError(f"{table}: no column named one of {', '.join(names)} (columns: {', '.join(row)})")


def _table_rows(table: Path):
    if table.suffix == ".jsonl":
        for n, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{table}:{n}: not JSON: {e}") from None
    else:
        with table.open(newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f, delimiter="\t" if table.suffix == ".tsv" else ",")


def _from_table(table: Path):
    """(key, {ext: bytes}) records of a captions table (missing files become missing images)."""
    image_col = caption_col = None
    for i, row in enumerate(_table_rows(table)):
        image_col = image_col or _column(row, IMAGE_COLUMNS, table)
        caption_col = caption_col or _column(row, CAPTION_COLUMNS, table)
        record = {"txt": str(row.get(caption_col) or "").encode("utf-8")}
        path = table.parent / str(row[image_col])
        ext = path.suffix.lower().lstrip(".")
        if path.is_file():
            record[ext if ext in IMAGE_EXTS else "jpg"] = path.read_bytes()
        yield str(row.get("key") or f"{i:09d}"), record


def _from_sidecars(folder: Path):
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
    for i, path in enumerate(images):
        record = {path.suffix.lower().lstrip("."): path.read_bytes()}
        if path.with_suffix(".txt").is_file():
            record["txt"] = path.with_suffix(".txt").read_bytes()
        yield f"{i:09d}", record


def _from_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading img2dataset parquet needs pyarrow (pip install pyarrow)") from None
    table = pq.read_table(path)
    missing = {"jpg", "caption"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: parquet lacks columns {sorted(missing)} (img2dataset output_format=parquet)")
    for i, row in enumerate(table.to_pylist()):
        record = {"txt": (row["caption"] or "").encode("utf-8")}
        if row["jpg"]:
            record["jpg"] = row["jpg"]
        yield str(row.get("key") or f"{i:09d}"), record


def _from_shards(pattern, events: list):
    for url in expand_urls(pattern):
        yield from iter_records(url, events)


def source_records(src, events: list):
    """All (key, record) of SRC, in a stable order."""
    path = Path(src)
    if path.is_file() and path.suffix in TABLE_SUFFIXES:
        return _from_table(path)
    if path.is_file() and path.suffix == ".parquet":
        return _from_parquet(path)
    if path.is_dir() and not any(path.glob("*.tar")):
        tables = [p for p in sorted(path.iterdir()) if p.suffix in TABLE_SUFFIXES]
        if len(tables) > 1:
            raise ValueError(f"{path}: several caption tables ({', '.join(p.name for p in tables)}); name one")
        return _from_table(tables[0]) if tables else _from_sidecars(path)
    return _from_shards(src, events)


def shrink(data: bytes, short_side: int, quality: int) -> bytes:
    """Re-encode with the short side at most `short_side` pixels (JPEG, quality `quality`)."""
    img = open_image(data)
    w, h = img.size
    scale = min(1.0, short_side / min(w, h))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img.draft("RGB", size)  # decode JPEGs at a reduced scale when that stays above `size`
    img = load_rgb(img)
    if img.size != size:
        img = img.resize(size, Image.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def prepare(item, resize=None, quality: int = 90):
    """(key, record) -> a sample for the writer, or the reason it is unusable."""
    key, record = item
    if unsafe_member_name(key):
        return "unsafe_key"
    try:
        text = caption(record)
        data = image_bytes(record)
        ext = next(e for e in IMAGE_EXTS if e in record)
        if resize:
            data, ext = shrink(data, resize, quality), "jpg"
        else:
            open_image(data)  # header check: size limits and format
        sample = {"__key__": key, ext: data, "txt": text}
        if "json" in record:
            sample["json"] = record["json"]
        if "cls" in record:
            sample["cls"] = record["cls"]
        return sample
    except BadRecord as e:
        return e.reason


def _prepare_args(args):
    return prepare(*args)


def make_shards(src, out, resize=None, quality: int = 90, shard_size: int = 10000, workers: int = 1) -> dict:
    """Write SRC's usable records as OUT/000000.tar, ... and OUT/manifest.json; return the manifest."""
    events = []
    items = ((item, resize, quality) for item in source_records(src, events))
    with ShardSink(out, maxcount=shard_size) as sink:
        pool = Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_prepare_args, items, chunksize=16) if pool else map(_prepare_args, items)
            for result in results:
                if isinstance(result, str):
                    sink.skipped[result] += 1
                else:
                    sink.write(result)
        finally:
            if pool:
                pool.close()
        sink.skipped.update(Counter(events))
        manifest = sink.close(source=str(src), resize=resize)
    if manifest["samples"] == 0:
        raise ValueError(f"{src}: no usable records (skipped: {manifest['skipped'] or 'nothing found'})")
    return manifest
