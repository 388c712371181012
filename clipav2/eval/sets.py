"""Evaluation inputs, in one place: labelled webdataset shards (`KEY.cls`) or an ImageFolder
directory (class = sorted sub-directory index, as torchvision and ImageNet's val layout give) for
zero-shot classification, captioned shards (`KEY.txt`) for retrieval; class names and prompt
templates by name or from a text file (one per line):

    imagenet  CLIP's ImageNet-1k class names (index = class id) and its 80 templates
    demo      the demo set's (its OUT/eval/classnames.txt and templates.txt when beside the set)

Decoding is the data package's EvalTransform and shard reader. One rule for bad input: a record
or file whose image does not decode, or that lacks its label or caption, is skipped and counted
(`Batches.skipped`, reported beside the figures), never fatal, in every input kind.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

_HERE = Path(__file__).parent
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


class ClassMismatch(ValueError):
    """The class names given do not fit the evaluation set's labels."""


def lines(path) -> list[str]:
    """The non-empty, stripped lines of a UTF-8 text file; an empty file is an error naming it."""
    found = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not found:
        raise ValueError(f"{path}: no entries (one class name or template per line)")
    return found


IMAGENET_CLASSNAMES = tuple(lines(_HERE / "imagenet_classnames.txt"))
IMAGENET_TEMPLATES = tuple(lines(_HERE / "imagenet_templates.txt"))


def _named_list(kind: str, spec: str, eval_path) -> list[str]:
    if spec == "imagenet":
        return list(IMAGENET_CLASSNAMES if kind == "classnames" else IMAGENET_TEMPLATES)
    if spec == "demo":
        beside = Path(eval_path or "") / f"{kind}.txt"
        if eval_path and beside.is_file():
            return lines(beside)
        from clipav2.data import demo

        return getattr(demo, kind)()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{kind}: {spec!r} is not imagenet, demo, or a text file")
    return lines(spec)


def classnames(spec: str, eval_path=None) -> list[str]:
    return _named_list("classnames", spec, eval_path)


def templates(spec: str, eval_path=None) -> list[str]:
    found = _named_list("templates", spec, eval_path)
    bad = [t for t in found if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates: each needs exactly one {{}} for the class name, not {bad[0]!r}")
    return found


def check_classes(path: str, classes: int, folder_classes: int | None = None) -> None:
    """The class names must fit the set: as many as an ImageFolder's class directories, or as the
    `classnames.txt` stored beside labelled shards."""
    beside = Path(path if Path(path).is_dir() else Path(path).parent) / "classnames.txt"
    found = folder_classes if folder_classes is not None else len(lines(beside)) if beside.is_file() else None
    if found is not None and found != classes:
        where = "class directories" if folder_classes is not None else f"names in {beside}"
        raise ClassMismatch(f"zero-shot: {classes} class names given (data.eval_classnames) but the evaluation set "
                            f"{path} has {found} {where}")


def _part(part) -> tuple[int, int]:
    """(index, count) of this loader worker among all workers of all ranks sharing the set."""
    rank, world = part
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info else (0, 1)
    return rank * nw + wid, world * nw


class _ShardRecords(IterableDataset):
    """(uint8 image or None, target or None) per record of the shards, split across ranks
    (`part`: rank, world) and loader workers: by shard when there are enough shards, else record
    by record."""

    def __init__(self, urls, transform, target, part=(0, 1)):
        self.urls, self.transform, self.target, self.part = list(urls), transform, target, part

    def __iter__(self):
        from clipav2.data.records import BadRecord, image_bytes
        from clipav2.data.shards import iter_records

        index, count = _part(self.part)
        by_shard = len(self.urls) >= count
        n = -1
        for url in self.urls[index::count] if by_shard else self.urls:
            for _key, record in iter_records(url, []):
                n += 1
                if not by_shard and n % count != index:
                    continue
                target = self.target(record)
                try:
                    image = self.transform(image_bytes(record)) if target is not None else None
                except BadRecord:
                    image = None
                yield image, target


class _Folder(IterableDataset):
    """ImageFolder layout, read as bytes for EvalTransform."""

    def __init__(self, root, transform, part=(0, 1)):
        from torchvision.datasets.folder import make_dataset

        self.classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{root}: no class sub-directories")
        self.samples = make_dataset(str(root), {c: i for i, c in enumerate(self.classes)},
                                    extensions=tuple("." + e for e in IMAGE_EXTS))
        self.transform, self.part = transform, part

    def __iter__(self):
        from clipav2.data.records import BadRecord

        index, count = _part(self.part)
        for path, label in self.samples[index::count]:
            try:
                yield self.transform(Path(path).read_bytes()), label
            except (BadRecord, OSError):
                yield None, label


def _int_label(record):
    try:
        return int(record["cls"].decode().strip())
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def _caption(record):
    raw = record.get("txt")
    return raw.decode("utf-8", "replace") if raw is not None else None


class Batches:
    """Iterable of (uint8 images (B,3,S,S), targets) batches; `skipped` counts the records left
    out so far. With `classes`, a label at or above it is a ClassMismatch."""

    def __init__(self, loader, path: str, classes: int | None = None):
        self.loader, self.path, self.classes, self.skipped = loader, path, classes, 0

    def __iter__(self):
        from clipav2.signals import start_workers

        for images, targets, skipped in start_workers(self.loader):
            self.skipped += skipped
            if images is None:
                continue
            if self.classes is not None and int(targets.max()) >= self.classes:
                raise ClassMismatch(f"zero-shot: the evaluation set {self.path} has label {int(targets.max())} but "
                                    f"only {self.classes} class names are given (data.eval_classnames)")
            yield images, targets


def _loader(dataset, batch_size, workers, targets):
    def collate(items):
        good = [(image, target) for image, target in items if image is not None and target is not None]
        if not good:
            return None, None, len(items)
        images, found = zip(*good)
        return torch.stack(images), targets(list(found)), len(items) - len(good)

    from clipav2.signals import quiet_worker

    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                      worker_init_fn=quiet_worker if workers else None)


def classification_batches(path: str, image_size: int, kind: str, batch_size: int, workers: int = 0,
                           protocol: str = "clipa", classes: int | None = None, fast_decode: bool = True,
                           part=(0, 1)) -> Batches:
    """(uint8 images, int64 labels) batches of labelled shards or an ImageFolder; with `classes`,
    a set whose classes do not fit that many names is a ClassMismatch; `part` (rank, world): this
    rank's share of the set."""
    from clipav2.data import EvalTransform, expand_urls

    transform = EvalTransform(image_size, kind, fast_decode, protocol)
    if Path(path).is_dir() and not list(Path(path).glob("*.tar")):
        dataset = _Folder(path, transform, part)
    else:
        dataset = _ShardRecords(expand_urls(str(path)), transform, _int_label, part)
    if classes is not None:
        check_classes(str(path), classes, len(dataset.classes) if isinstance(dataset, _Folder) else None)
    labels = lambda found: torch.tensor(found, dtype=torch.long)  # noqa: E731
    return Batches(_loader(dataset, batch_size, workers, labels), str(path), classes)


def retrieval_batches(path: str, image_size: int, kind: str, batch_size: int, tokenize, workers: int = 0,
                      protocol: str = "clipa", fast_decode: bool = True, part=(0, 1)) -> Batches:
    """(uint8 images, token ids) batches of captioned shards (caption = `txt`); `part` (rank,
    world): this rank's share of the pairs."""
    from clipav2.data import EvalTransform, expand_urls

    dataset = _ShardRecords(expand_urls(str(path)), EvalTransform(image_size, kind, fast_decode, protocol), _caption,
                            part)
    return Batches(_loader(dataset, batch_size, workers, tokenize), str(path))
