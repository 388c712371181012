"""open_clip model folders (`clipav2 convert --to open_clip IN FOLDER`) checked by open_clip itself:
`create_model_and_transforms("local-dir:" + FOLDER)` must give our embeddings and the preprocessing
the model was trained with, and the folder must convert back to the same model."""
import json
import os
import stat

import open_clip
import pytest
import torch
import torchvision.transforms as T
from safetensors.torch import save_file

import clipav2
from clipav2 import cli
from clipav2.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clipav2.models.convert import load_model, read_metadata, save_model

from openclip_tiny import TINY


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _inputs(size, length, vocab):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, vocab, (2, length), generator=g)
    ids[:, 0], ids[1, length // 2:] = 101, 0  # [CLS] first, one caption padded
    return torch.randn(2, 3, size, size, generator=g), ids


# a CLIPA architecture (the smallest, at 112 px to keep it cheap) and the demo model
@pytest.mark.parametrize("name, size", [("ViT-B-16-CLIPA", 112), ("demo", 64)])
def test_folder_loads_in_open_clip_as_trained(tmp_path, capsys, name, size):
    torch.manual_seed(0)
    ours = clipav2.create_model(name, image_size=size).eval()
    src, folder = tmp_path / "finetune.safetensors", tmp_path / "exported"
    save_model(ours, src, stage="finetune")
    assert cli.main(["convert", "--to", "open_clip", str(src), str(folder)]) == 0  # no --model: the file names it
    assert "open_clip model folder" in capsys.readouterr().out

    oc, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(folder))
    oc.eval()
    images, ids = _inputs(size, ours.text.context_length, 30522)
    with torch.no_grad():
        assert _rel(oc.encode_image(images, normalize=True), ours.encode_image(images)) <= 1e-4
        assert _rel(oc.encode_text(ids, normalize=True), ours.encode_text(ids)) <= 1e-4
    # the numerics came from the folder's config, not from open_clip's defaults
    block = oc.visual.transformer.resblocks[0]
    assert block.mlp.gelu.approximate == "tanh" and block.ln_1.eps == 1e-6 and oc.ln_final.eps == 1e-6
    # ...and so did the preprocessing: ImageNet mean/std, bilinear, squashed to the square
    resize = next(t for t in preprocess.transforms if isinstance(t, T.Resize))
    norm = next(t for t in preprocess.transforms if isinstance(t, T.Normalize))
    assert resize.size == (size, size) and resize.interpolation == T.InterpolationMode.BILINEAR
    assert not any(isinstance(t, T.CenterCrop) for t in preprocess.transforms)
    assert tuple(norm.mean) == IMAGENET_MEAN and tuple(norm.std) == IMAGENET_STD
    assert oc.visual.preprocess_cfg["resize_mode"] == "squash"
    del oc

    back = tmp_path / "back.safetensors"
    assert cli.main(["convert", "--from", "open_clip", str(folder), str(back)]) == 0  # no --model either
    again = load_model(back)
    assert again.arch == ours.arch
    mine = ours.state_dict()
    assert all(torch.equal(v, mine[k]) for k, v in again.state_dict().items())


def test_someone_elses_folder_takes_its_numerics_from_model_cfg(tmp_path, capsys):
    """A folder as open_clip users publish them (plain weights, no metadata of ours): --model is
    needed, and the act_kwargs / norm_kwargs of its config decide GELU and LayerNorm eps."""
    cfg = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}},
           "text_cfg": {**TINY["text_cfg"], "act_kwargs": {"approximate": "tanh"}, "norm_kwargs": {"eps": 1e-6}}}
    torch.manual_seed(0)
    oc = open_clip.model.CLIP(**cfg).eval()
    folder = tmp_path / "hub"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    out = tmp_path / "ours.safetensors"
    assert cli.main(["convert", "--from", "open_clip", str(folder), str(out)]) == 1
    assert "give --model" in capsys.readouterr().err
    assert cli.main(["convert", "--from", "open_clip", str(folder), str(out), "--model", "tiny"]) == 0
    ours = load_model(out)
    assert (ours.arch.gelu, ours.arch.ln_eps) == ("tanh", 1e-6)
    images, ids = _inputs(32, 16, 30522)
    with torch.no_grad():
        assert _rel(ours.encode_image(images), oc.encode_image(images, normalize=True)) <= 1e-5
        assert _rel(ours.encode_text(ids), oc.encode_text(ids, normalize=True)) <= 1e-5


def test_written_weights_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        save_model(clipav2.create_model("tiny"), tmp_path / "stage.safetensors")
        assert cli.main(["convert", "--to", "open_clip", str(tmp_path / "stage.safetensors"), str(tmp_path / "f")]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "stage.safetensors", tmp_path / "f" / "open_clip_model.safetensors",
                 tmp_path / "f" / "open_clip_config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert read_metadata(tmp_path / "f" / "open_clip_model.safetensors")["layout"] == "open_clip"


def test_no_vocabulary_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """A CLIPA-v2 folder without its tokenizer would not load offline: refuse before writing."""
    from clipav2.text import vocab

    def offline():
        raise RuntimeError("not in the Hugging Face cache and HF_HUB_OFFLINE is set")

    monkeypatch.delenv("CLIPAV2_VOCAB", raising=False)
    monkeypatch.setattr(vocab, "_from_hub", offline)
    save_model(clipav2.create_model("tiny"), tmp_path / "stage.safetensors")
    assert cli.main(["convert", "--to", "open_clip", str(tmp_path / "stage.safetensors"), str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("clipav2 convert: no WordPiece vocabulary found") and err.count("\n") == 1
    assert not (tmp_path / "f").exists()
    given = tmp_path / "vocab.txt"
    given.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    assert cli.main(["convert", "--to", "open_clip", str(tmp_path / "stage.safetensors"), str(tmp_path / "f"),
                     "--vocab", str(given)]) == 0
    assert (tmp_path / "f" / "vocab.txt").read_text() == given.read_text()
