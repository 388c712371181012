"""open_clip interchange through files and the CLI, our own files, and the errors bad checkpoints get."""
import collections

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import clipav2
from clipav2 import cli
from clipav2.models import create_model
from clipav2.models.convert import (
    from_open_clip, load_model, read_metadata, save_model, save_open_clip, to_open_clip,
)

from openclip_tiny import TINY
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 30522, (2, 16), generator=torch.Generator().manual_seed(1))


def _open_clip_tiny(seed=0):
    torch.manual_seed(seed)
    return open_clip.model.CLIP(**TINY).eval()


def _assert_same_as_open_clip(ours, oc):
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(IMAGES), oc.encode_image(IMAGES, normalize=True))
        torch.testing.assert_close(ours.encode_text(IDS), oc.encode_text(IDS, normalize=True))


@pytest.mark.parametrize("form", ["bin", "pt-training-checkpoint", "safetensors"])
def test_open_clip_files_load(tmp_path, form):
    oc = _open_clip_tiny()
    sd = oc.state_dict()
    if form == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    elif form == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:  # what open_clip's trainer writes: a dict with the epoch and a DDP-prefixed state dict
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "name": "run", "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    ours = from_open_clip(path, "tiny")
    a = ours.arch
    assert (a.gelu, a.ln_eps, a.vision.pos_embed) == ("exact", 1e-5, "learned")  # open_clip's numerics
    _assert_same_as_open_clip(ours, oc)


def test_cli_round_trip_through_open_clip(tmp_path, capsys):
    oc = _open_clip_tiny()
    torch.save(oc.state_dict(), tmp_path / "oc.bin")
    ours_path, back_path = tmp_path / "ours.safetensors", tmp_path / "back.safetensors"
    assert cli.main(["convert", "--from", "open_clip", str(tmp_path / "oc.bin"), str(ours_path), "--model", "tiny"]) == 0
    info = read_metadata(ours_path)
    assert info["arch"] == "tiny" and info["layout"] == "clipav2"
    assert info["options"] == {"image_size": 32, "context_length": 16, "pos_embed": "learned", "gelu": "exact", "ln_eps": 1e-5}
    _assert_same_as_open_clip(clipav2.load_model(ours_path), oc)  # the package-level entry point

    assert cli.main(["convert", "--to", "open_clip", str(ours_path), str(back_path), "--model", "tiny"]) == 0
    fresh = _open_clip_tiny(seed=1)
    open_clip.load_checkpoint(fresh, str(back_path), strict=True)  # open_clip's own loader
    _assert_same_as_open_clip(load_model(ours_path), fresh)
    assert "wrote" in capsys.readouterr().out


def test_our_files_rebuild_the_model_with_its_options(tmp_path):
    torch.manual_seed(0)
    model = create_model("demo")
    model.set_image_size(48)  # a later stage: sin-cos at 48 px, text length 8
    model.set_text_len(8)
    save_model(model, tmp_path / "m.safetensors", step=5, stage="pretrain")
    info = read_metadata(tmp_path / "m.safetensors")
    assert info["meta"] == {"step": 5, "stage": "pretrain"}
    loaded = load_model(tmp_path / "m.safetensors", attention="sdpa")
    assert loaded.arch == model.arch
    images, ids = torch.randn(1, 3, 48, 48), torch.randint(0, 32000, (1, 8))
    with torch.no_grad():
        want = model(images, ids)
        for got, ref in zip(loaded(images, ids), want):
            torch.testing.assert_close(got, ref)
        # exported to open_clip's layout and read back, it keeps its own numerics (sin-cos, tanh GELU)
        with pytest.warns(UserWarning, match="exact GELU"):
            save_open_clip(model, tmp_path / "oc.safetensors")
        again = load_model(tmp_path / "oc.safetensors")
        assert again.arch.vision.pos_embed == "sincos" and again.arch.gelu == "tanh"
        torch.testing.assert_close(again(images, ids)[0], want[0])


def _tiny_open_clip_state():
    return collections.OrderedDict(_open_clip_tiny().state_dict())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("visual.ln_post.weight"), r"missing keys: visual\.norm\.weight"),
        (lambda sd: sd.pop("transformer.resblocks.1.mlp.c_fc.bias"), r"missing keys: text\.blocks\.1\.mlp\.fc1\.bias"),
        (lambda sd: sd.__setitem__("visual.transformer.resblocks.2.ln_1.weight", torch.ones(32)),
         r"unexpected keys: visual\.blocks\.2\.norm1\.weight"),
        (lambda sd: sd.__setitem__("visual.ls_1.gamma", torch.ones(32)), r"unexpected keys: visual\.ls_1\.gamma"),
        (lambda sd: sd.__setitem__("visual.conv1.weight", torch.zeros(32, 3, 16, 16)),
         r"wrong shapes: visual\.patch_embed\.weight \(32, 3, 16, 16\) \(model expects \(32, 3, 8, 8\)\)"),
    ],
)
def test_bad_checkpoints_name_the_keys(edit, match):
    sd = _tiny_open_clip_state()
    edit(sd)
    with pytest.raises(ValueError, match=match):
        from_open_clip(sd, "tiny")


def test_wrong_architecture_is_named():
    with pytest.raises(ValueError, match="does not fit 'demo'.*wrong shapes"):
        from_open_clip(_tiny_open_clip_state(), "demo")


class _Payload:  # an arbitrary object: weights-only loading must refuse to unpickle it
    pass


def test_arbitrary_pickles_are_refused(tmp_path):
    torch.save({"state_dict": {"x": _Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        from_open_clip(tmp_path / "evil.pt", "tiny")


def test_files_without_metadata_need_a_name(tmp_path):
    sd = {k: v.contiguous() for k, v in _tiny_open_clip_state().items()}
    save_file(sd, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no clipav2 metadata"):
        load_model(tmp_path / "plain.safetensors")
    assert load_model(tmp_path / "plain.safetensors", name="tiny").arch.vision.pos_embed == "learned"
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_model(tmp_path / "nothing.safetensors")


def test_cli_errors(tmp_path, capsys):
    ours = tmp_path / "ours.safetensors"
    save_model(create_model("tiny"), ours)
    assert cli.main(["convert", "--to", "open_clip", str(ours), str(tmp_path / "o.safetensors"), "--model", "ViT-Q"]) == 2
    assert "unknown architecture 'ViT-Q'" in capsys.readouterr().err
    assert cli.main(["convert", "--to", "open_clip", str(ours), str(tmp_path / "o.bin"), "--model", "tiny"]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
    assert cli.main(["convert", "--to", "open_clip", str(ours), str(tmp_path / "o.safetensors"), "--model", "demo"]) == 1
    assert "holds a 'tiny' model, not 'demo'" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_export_is_open_clip_layout_exactly():
    model = create_model("tiny")
    with torch.device("meta"):
        oc = open_clip.model.CLIP(**TINY)
    with pytest.warns(UserWarning, match="tanh"):  # ours uses the JAX numerics by default
        exported = to_open_clip(model)
    assert set(exported) == set(oc.state_dict())
    assert torch.equal(exported["visual.proj"], model.visual.head.weight.t())
