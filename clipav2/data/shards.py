"""Webdataset shards: naming them (`expand_urls`), reading their records robustly
(`iter_records`) and writing them (`ShardSink`). Records follow img2dataset's layout:
`KEY.jpg|png|webp`, `KEY.txt`, optional `KEY.json` / `KEY.cls`, grouped by KEY."""
from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import braceexpand

# What is read of one member: a caption, JSON or label is a few kB and an image file a few MB; a
# member larger than this (a 50 MB caption, a sparse member claiming 1 TB) is not read at all: its
# record is skipped and counted as "member_too_large" (clipav2.data.records).
MAX_TEXT_MEMBER = 1 << 20
MAX_IMAGE_MEMBER = 1 << 27
OVERSIZED = "__oversized__"  # the record's entry listing the members left unread

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "sftp://", "scp://", "ais://")
_GLOB_CHARS = set("*?[")


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside braces: 'a/{0..3}.tar,b/{x,y}.tar' -> two patterns."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_local(path: str) -> list[str]:
    if os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"directory {path!r} holds no .tar shards")
        return found
    if _GLOB_CHARS & set(path):
        found = sorted(glob.glob(path))
        if not found:
            raise FileNotFoundError(f"no file matches {path!r}")
        return found
    return [path]


def expand_urls(pattern) -> list[str]:
    """Shard URLs from a brace pattern (`/d/{00000..00099}.tar`), a comma or `::` separated list,
    a directory (its `*.tar`), a glob, or `pipe:`/remote URLs (kept as given, braces expanded).
    Raises FileNotFoundError when a local shard is missing or nothing matches, ValueError for an
    empty pattern."""
    items = list(pattern) if isinstance(pattern, (list, tuple)) else [pattern]
    parts = []
    for item in items:
        item = os.fspath(item) if isinstance(item, os.PathLike) else item
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"empty shard pattern {pattern!r}")
        for chunk in item.split("::"):
            parts += [chunk.strip()] if chunk.strip().startswith("pipe:") else _split_top_level(chunk)
    if not parts:
        raise ValueError(f"empty shard pattern {pattern!r}")
    urls = []
    for part in parts:
        for url in braceexpand.braceexpand(part):
            urls += [url] if url.startswith(REMOTE_PREFIXES) else _expand_local(url.removeprefix("file:"))
    missing = [u for u in urls if not u.startswith(REMOTE_PREFIXES) and not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(urls)} shards of {pattern!r} do not exist, e.g. {missing[0]!r}"
        )
    return urls


def _gopen(url: str):
    import webdataset  # pipe:/http(s)/cloud URLs; imported only when used (it imports torch)

    return webdataset.gopen(url, "rb")


def _split_name(name: str):
    """'dir/000123.jpg' -> ('dir/000123', 'jpg'): the key is everything before the basename's
    first dot, as in webdataset."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, None
    return (f"{head}/{stem}" if head else stem), ext


def member_limit(ext: str) -> int:
    return MAX_IMAGE_MEMBER if ext in ("jpg", "jpeg", "png", "webp") else MAX_TEXT_MEMBER


class _StopAtEnd:
    """A shard's bytes that raise EOFError when read again after their end. tarfile skips an unread
    member in stream mode by reading forward block by block; a header claiming 1 TB in a short file
    would otherwise mean ~10^8 empty reads (hours) before the next header."""

    def __init__(self, stream):
        self.stream, self.ended = stream, False

    def read(self, size=-1):
        data = self.stream.read(size)
        if not data and size != 0:
            if self.ended:
                raise EOFError("read past the end of the shard")
            self.ended = True
        return data


def iter_records(url: str, events: list, sub: int = 0, nsub: int = 1):
    """Yield (key, {ext: bytes}) for the records of one shard whose index % nsub == sub; a
    member over `member_limit` is not read but named in the record's OVERSIZED list.
    Never raises for bad data: a shard that cannot be opened or holds no tar header appends
    "unreadable_shard" to `events`, a tar that ends early "truncated_tar" (the record cut off
    is dropped, the ones before it are kept)."""
    try:
        stream = open(url, "rb") if not url.startswith(REMOTE_PREFIXES) else _gopen(url)
    except Exception:  # noqa: BLE001 - any opener failure is a bad shard, not a crash
        events.append("unreadable_shard")
        return
    index, key, record, seen, duplicate = 0, None, {}, False, False
    try:
        tar = tarfile.open(fileobj=_StopAtEnd(stream), mode="r|*")
        for member in tar:
            seen = True
            if not member.isreg():
                continue
            prefix, ext = _split_name(member.name)
            if prefix is None or os.path.basename(prefix).startswith("__"):
                continue
            if prefix == key and (duplicate or ext.lower() in record):
                # a second record with the same key right after the first: counted and dropped,
                # never merged into the first (its members would overwrite the first's)
                if not duplicate and index % nsub == sub:
                    events.append("duplicate_key")
                duplicate = True
                continue
            duplicate = False
            if prefix != key:
                if key is not None:
                    if index % nsub == sub:
                        yield key, record
                    index += 1
                key, record = prefix, {}
            if index % nsub == sub and member.size > member_limit(ext.lower()):
                record.setdefault(OVERSIZED, []).append(ext.lower())
            elif index % nsub == sub:  # other slices' data is skipped by the stream reader
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise EOFError(f"{member.name} cut short")
                record[ext.lower()] = data
            tar.members = []  # stream mode keeps every header otherwise
        if key is not None and index % nsub == sub:
            yield key, record
    except (tarfile.TarError, EOFError, OSError, ValueError):
        events.append("truncated_tar" if seen else "unreadable_shard")
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - a pipe's non-zero exit after a good read
            pass


def _encode(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode("utf-8")
    if isinstance(value, int):
        return str(value).encode()
    raise TypeError(f"cannot write a {type(value).__name__} into a shard")


def unsafe_member_name(key: str) -> bool:
    """A key whose tar members would land outside the directory they are extracted into
    (absolute, a '..' component, a drive or backslash path) or that is empty."""
    parts = key.replace("\\", "/").split("/")
    return not key or key.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts or "\x00" in key


class ShardSink:
    """Write samples ({"__key__", "jpg"/"png": bytes, "txt": str, "json": dict, "cls": int})
    into OUT/000000.tar, 000001.tar, ... (at most `maxcount` each, members in key order as
    img2dataset writes them) and a manifest.json with counts and bytes."""

    def __init__(self, out_dir, maxcount: int = 10000):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if any(self.out.glob("*.tar")):
            raise FileExistsError(f"{self.out} already holds shards; write into an empty directory")
        self.maxcount = maxcount
        self.tar = None
        self.shards = 0
        self.count = 0
        self.bytes = 0
        self.skipped: Counter = Counter()
        self.manifest = None

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if unsafe_member_name(key):
            raise ValueError(f"record key {key!r}: a shard member name must be a relative path without '..'")
        if self.tar is None or self.count % self.maxcount == 0:
            self._next_shard()
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            data = _encode(value)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0  # no timestamps: reproducible bytes
            self.tar.addfile(info, io.BytesIO(data))
            self.bytes += len(data) if isinstance(value, bytes) else 0
        self.count += 1

    def _next_shard(self):
        if self.tar is not None:
            self.tar.close()
        self.tar = tarfile.open(self.out / f"{self.shards:06d}.tar", "w", format=tarfile.USTAR_FORMAT)
        self.shards += 1

    def close(self, **extra) -> dict:
        if self.manifest is not None:
            return self.manifest
        if self.tar is not None:
            self.tar.close()
        shards = sorted(p.name for p in self.out.glob("*.tar"))
        manifest = {"samples": self.count, "image_bytes": self.bytes, "shards": shards,
                    "skipped": dict(self.skipped), **extra}
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        self.manifest = manifest
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        elif self.tar is not None:
            self.tar.close()
