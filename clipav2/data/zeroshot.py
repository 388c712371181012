"""Zero-shot evaluation input: class names, prompt templates, and labelled images.

`classnames(spec)` / `templates(spec)`: "imagenet" (CLIP's ImageNet-1k names and its 80
templates, shipped as text files), "demo" (the demo set's), or a path to a text file with one
entry per line. `eval_batches(path, ...)` yields (uint8 images (B,3,S,S), int64 labels (B,))
from an ImageFolder-style directory (class = sorted sub-directory index, as torchvision and
ImageNet's val layout give) or from labelled shards (`KEY.cls`).
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from clipav2.data import demo
from clipav2.data.records import BadRecord, image_bytes
from clipav2.data.shards import expand_urls, iter_records
from clipav2.data.transforms import EvalTransform

_HERE = Path(__file__).parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def _lines(path) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path}: no entries (one class name or template per line)")
    return lines


IMAGENET_CLASSNAMES = tuple(_lines(_HERE / "imagenet_classnames.txt"))  # CLIP's, index = ImageNet class id
IMAGENET_TEMPLATES = tuple(_lines(_HERE / "imagenet_templates.txt"))  # CLIP's 80 prompts, "{}" = class name


def classnames(spec: str) -> list[str]:
    if spec == "imagenet":
        return list(IMAGENET_CLASSNAMES)
    if spec == "demo":
        return demo.classnames()
    if not Path(spec).is_file():
        raise FileNotFoundError(f"class names: {spec!r} is not imagenet, demo, or a text file")
    return _lines(spec)


def templates(spec: str) -> list[str]:
    found = (list(IMAGENET_TEMPLATES) if spec == "imagenet" else demo.templates() if spec == "demo"
             else _lines(spec) if Path(spec).is_file() else None)
    if found is None:
        raise FileNotFoundError(f"templates: {spec!r} is not imagenet, demo, or a text file")
    bad = [t for t in found if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates: each needs exactly one {{}} for the class name, not {bad[0]!r}")
    return found


class _ImageFolder(Dataset):
    def __init__(self, root, transform):
        root = Path(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.items = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
                      if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.items:
            raise FileNotFoundError(f"{root}: no images in class sub-directories (ImageFolder layout)")
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        try:
            return self.transform(path.read_bytes()), label
        except BadRecord as e:
            raise ValueError(f"evaluation image {path}: {e}") from None


class _LabelledShards(IterableDataset):
    """Each worker reads every n-th shard; unusable records are skipped (the count of
    evaluated images says how many were used)."""

    def __init__(self, urls, transform):
        self.urls, self.transform = urls, transform

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        for url in self.urls[wid::n]:
            for _, record in iter_records(url, []):
                try:
                    image = self.transform(image_bytes(record))
                    label = int(record["cls"].decode().strip())
                except (BadRecord, KeyError, ValueError):
                    continue
                yield image, label


def eval_batches(path, image_size: int, kind: str = "center_crop", batch_size: int = 256, workers: int = 2,
                 fast_decode: bool = True):
    """(uint8 images, int64 labels) batches of an ImageFolder directory or labelled shards."""
    transform = EvalTransform(image_size, kind, fast_decode)
    is_folder = Path(path).is_dir() and any(p.is_dir() for p in Path(path).iterdir())
    dataset = _ImageFolder(path, transform) if is_folder else _LabelledShards(expand_urls(path), transform)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
