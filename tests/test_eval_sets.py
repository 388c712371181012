"""The evaluation inputs (clipav2.eval.sets), directly: named lists and text files, ImageFolder
and labelled shards giving the same batches, retrieval shards, and the one bad-input rule
(skipped and counted, in every kind of input)."""
import io

import pytest
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from clipav2.data import demo
from clipav2.data.shards import ShardSink
from clipav2.eval import sets


def _png(value, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_named_lists_and_files(tmp_path):
    assert sets.classnames("imagenet") == list(IMAGENET_CLASSNAMES)
    assert [t.format("dog") for t in sets.templates("imagenet")] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]
    assert sets.classnames("demo") == demo.classnames() and sets.templates("demo") == demo.templates()
    (tmp_path / "classnames.txt").write_text("cat\n\n  dog  \n")
    assert sets.classnames("demo", tmp_path) == ["cat", "dog"], "the demo's list beside the set wins"
    assert sets.classnames(str(tmp_path / "classnames.txt")) == ["cat", "dog"]
    (tmp_path / "t.txt").write_text("a photo of {}\nno slot\n")
    with pytest.raises(ValueError, match="exactly one {}.*'no slot'"):
        sets.templates(str(tmp_path / "t.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty.txt: no entries"):
        sets.classnames(str(tmp_path / "empty.txt"))
    with pytest.raises(FileNotFoundError, match="'nope' is not imagenet, demo, or a text file"):
        sets.classnames("nope")


@pytest.fixture
def same_set(tmp_path):
    """Six images of two classes, one of them broken, as an ImageFolder and as labelled shards."""
    folder, shards = tmp_path / "folder", tmp_path / "shards"
    sink = ShardSink(shards)
    for i in range(6):
        label, data = i % 2, _png(40 * i) if i != 3 else b"not an image"
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        (folder / f"c{label}" / f"{i}.png").write_bytes(data)
        sink.write({"__key__": f"{i:06d}", "png": data, "cls": label})
    sink.write({"__key__": "000006", "png": _png(7)})  # no label
    sink.close()
    return str(folder), str(shards / "000000.tar")


def test_folder_and_shards_give_the_same_batches_and_skip_alike(same_set):
    folder, shards = same_set
    got = {}
    for name, path in (("folder", folder), ("shards", shards)):
        batches = sets.classification_batches(path, 16, "center_crop", batch_size=2)
        items = [(img, int(label)) for images, labels in batches for img, label in zip(images, labels)]
        got[name] = sorted(items, key=lambda x: (x[1], x[0].float().mean().item()))
        assert batches.skipped == (1 if name == "folder" else 2), "the broken image (and the unlabelled record)"
        assert all(img.shape == (3, 16, 16) and img.dtype == torch.uint8 for img, _ in items)
    assert [label for _, label in got["folder"]] == [0, 0, 0, 1, 1]
    assert all(torch.equal(a, b) and la == lb for (a, la), (b, lb) in zip(got["folder"], got["shards"]))


def test_retrieval_batches_tokenize_captions(tmp_path):
    sink = ShardSink(tmp_path)
    for i, caption in enumerate(["a red square", "a green circle", None]):
        sink.write({"__key__": f"{i:06d}", "png": _png(50 * i), **({"txt": caption} if caption else {})})
    sink.close()
    seen = []
    batches = sets.retrieval_batches(str(tmp_path / "000000.tar"), 16, "resize", 8, lambda c: seen.extend(c) or torch.zeros(len(c), 4))
    (images, ids), = list(batches)
    assert images.shape == (2, 3, 16, 16) and ids.shape == (2, 4) and seen == ["a red square", "a green circle"]
    assert batches.skipped == 1
