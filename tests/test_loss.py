"""clip_loss against open_clip's ClipLoss (an independent implementation), and the 2-rank loss
with gradients through the gather against the single-process loss over the global batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipav2.loss import clip_loss
from clipav2.parallel.env import World


def _features(n=16, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt, torch.tensor(14.3)


def test_matches_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt, scale = _features()
    expected = open_clip_loss.ClipLoss()(img, txt, scale)
    assert clip_loss(img, txt, scale) == pytest.approx(expected.item(), abs=1e-6)


def test_shape_mismatch_is_an_error():
    img, txt, scale = _features()
    with pytest.raises(ValueError, match="must be equal"):
        clip_loss(img, txt[:4], scale)


def _rank(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    img, txt, scale = _features()
    rows = slice(rank * 8, rank * 8 + 8)
    local_img, local_txt = img[rows].clone().requires_grad_(), txt[rows].clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    loss = clip_loss(local_img, local_txt, scale, World(rank=rank, world_size=2))
    loss.backward()
    # data parallelism averages the gradients over ranks: do the same to the local ones
    scale_grad = scale.grad.clone()
    dist.all_reduce(scale_grad)
    out[rank] = (loss.item(), local_img.grad / 2, local_txt.grad / 2, scale_grad / 2)
    dist.destroy_process_group()


def test_gathered_loss_and_gradient_equal_single_process():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(port, out), nprocs=2)
    img, txt, scale = _features()
    img.requires_grad_(), txt.requires_grad_(), scale.requires_grad_()
    loss = clip_loss(img, txt, scale)
    loss.backward()
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]), img.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]), txt.grad, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(out[0][3], scale.grad, atol=1e-7, rtol=1e-5)
