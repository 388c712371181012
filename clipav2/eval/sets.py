"""Evaluation inputs: labelled webdataset shards (`cls`) or an ImageFolder directory for zero-shot
classification, captioned shards for retrieval; class names and prompt templates by name
("imagenet", "demo") or from a text file. Decoding uses the data package's EvalTransform and shard
reader; batches are (uint8 images, labels) or (uint8 images, token ids)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _lines(path) -> list[str]:
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path}: empty")
    return lines


def _named_list(kind: str, spec: str, eval_path: str | None) -> list[str]:
    """`demo` (preferring OUT/eval/<kind>.txt beside the set), `imagenet`, or a text file."""
    if spec == "demo":
        beside = Path(eval_path or "") / f"{kind}.txt"
        if eval_path and beside.is_file():
            return _lines(beside)
        from clipav2.data import demo

        return getattr(demo, kind)()
    if spec == "imagenet":
        from clipav2.data import zeroshot

        return list(getattr(zeroshot, f"IMAGENET_{kind.upper()}"))
    return _lines(spec)


def classnames(spec: str, eval_path: str | None = None) -> list[str]:
    return _named_list("classnames", spec, eval_path)


def templates(spec: str, eval_path: str | None = None) -> list[str]:
    return _named_list("templates", spec, eval_path)


def _image_of(record: dict):
    for ext in IMAGE_EXTS:
        if ext in record:
            return record[ext]
    return None


class ClassMismatch(ValueError):
    """The class names given do not fit the evaluation set's labels."""


def _part(part) -> tuple[int, int]:
    """(index, count) of this loader worker among all workers of all ranks sharing the set."""
    rank, world = part
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    return rank * nw + wid, world * nw


class _ShardRecords(IterableDataset):
    """(uint8 image, target) per good record of the shards, split across ranks (`part`: rank,
    world) and loader workers: by shard when there are enough shards, else record by record."""

    def __init__(self, urls, transform, target, part=(0, 1)):
        self.urls, self.transform, self.target, self.part = list(urls), transform, target, part

    def __iter__(self):
        from clipav2.data.shards import iter_records

        index, count = _part(self.part)
        by_shard = len(self.urls) >= count
        events = []
        n = -1
        for url in self.urls[index::count] if by_shard else self.urls:
            for _key, record in iter_records(url, events):
                n += 1
                if not by_shard and n % count != index:
                    continue
                data, target = _image_of(record), self.target(record)
                if data is None or target is None:
                    continue
                try:
                    yield self.transform(data), target
                except Exception:  # noqa: BLE001 - a bad image is skipped in evaluation too
                    continue


class _Folder(IterableDataset):
    """ImageFolder layout (one sub-directory per class, sorted), read as bytes for EvalTransform."""

    def __init__(self, root, transform, part=(0, 1)):
        from torchvision.datasets.folder import make_dataset

        self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{root}: no class sub-directories")
        self.samples = make_dataset(str(root), {c: i for i, c in enumerate(self.classes)},
                                    extensions=tuple("." + e for e in IMAGE_EXTS))
        self.transform, self.part = transform, part

    def __iter__(self):
        index, count = _part(self.part)
        for path, label in self.samples[index::count]:
            yield self.transform(Path(path).read_bytes()), label


def _int_label(record):
    raw = record.get("cls")
    try:
        return int(raw.decode().strip()) if raw is not None else None
    except ValueError:
        return None


def check_classes(path: str, classes: int, folder_classes: int | None = None) -> None:
    """The class names must fit the set: as many as an ImageFolder's class directories, or as the
    `classnames.txt` stored beside labelled shards."""
    beside = Path(path if Path(path).is_dir() else Path(path).parent) / "classnames.txt"
    found = folder_classes if folder_classes is not None else len(_lines(beside)) if beside.is_file() else None
    if found is not None and found != classes:
        where = "class directories" if folder_classes is not None else f"names in {beside}"
        raise ClassMismatch(f"zero-shot: {classes} class names given (data.eval_classnames) but the evaluation set "
                            f"{path} has {found} {where}")


def _checked_labels(batches, classes: int, path: str):
    for images, labels in batches:
        if labels.numel() and int(labels.max()) >= classes:
            raise ClassMismatch(f"zero-shot: the evaluation set {path} has label {int(labels.max())} but only "
                                f"{classes} class names are given (data.eval_classnames)")
        yield images, labels


def classification_batches(path: str, image_size: int, kind: str, batch_size: int, workers: int = 0,
                           protocol: str = "clipa", classes: int | None = None, part=(0, 1)):
    """Batches of (uint8 images (B,3,S,S), labels (B,)) from labelled shards or an ImageFolder;
    with `classes`, a set whose classes do not fit that many names is a `ClassMismatch`;
    `part` (rank, world): this rank's share of the set."""
    from clipav2.data import EvalTransform, expand_urls

    transform = EvalTransform(image_size, kind, protocol=protocol)
    if Path(path).is_dir() and not list(Path(path).glob("*.tar")):
        dataset = _Folder(path, transform, part)
    else:
        dataset = _ShardRecords(expand_urls(path), transform, _int_label, part)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    if classes is None:
        return loader
    check_classes(path, classes, len(dataset.classes) if isinstance(dataset, _Folder) else None)
    return _checked_labels(loader, classes, path)


def retrieval_batches(path: str, image_size: int, kind: str, batch_size: int, tokenize, workers: int = 0,
                      protocol: str = "clipa"):
    """Batches of (uint8 images, token ids) from captioned shards (caption = `txt`)."""
    from clipav2.data import EvalTransform, expand_urls

    def caption(record):
        raw = record.get("txt")
        return raw.decode("utf-8", "replace") if raw is not None else None

    dataset = _ShardRecords(expand_urls(path), EvalTransform(image_size, kind, protocol=protocol), caption)

    def collate(items):
        images, captions = zip(*items)
        return torch.stack(images), tokenize(list(captions))

    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)


def _collate(items):
    images, labels = zip(*items)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
