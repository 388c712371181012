"""Batches for the benchmark: synthetic uint8 images and token ids made once on the device (so
the step, not the host, is measured), or the real loader for `--data`. Either way a step's input
is a list of `n_micro` micro-batches shaped like the loader's: {"images", "text", "keys"}."""
from __future__ import annotations

import itertools

import torch


def synthetic_batches(micro_batch: int, image_size: int, text_len: int, vocab_size: int,
                      n_micro: int, device: torch.device, seed: int = 0, pool: int = 2):
    """An endless iterator of steps built from `pool` distinct micro-batches resident on `device`
    (uint8 NCHW images, int64 ids in [1, vocab)); nothing crosses the host-device link per step."""
    for name, value in (("micro_batch", micro_batch), ("image_size", image_size), ("text_len", text_len),
                        ("n_micro", n_micro)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    g = torch.Generator(device=device).manual_seed(seed)
    micro = []
    for i in range(pool):
        images = torch.randint(0, 256, (micro_batch, 3, image_size, image_size), generator=g,
                               device=device, dtype=torch.uint8)
        text = torch.randint(1, vocab_size, (micro_batch, text_len), generator=g, device=device)
        micro.append({"images": images, "text": text, "keys": [f"synthetic/{i}/{j}" for j in range(micro_batch)]})
    cycle = itertools.cycle(micro)
    while True:
        yield [next(cycle) for _ in range(n_micro)]


def loader_batches(loader, n_micro: int, device: torch.device):
    """Steps of `n_micro` micro-batches from the real loader, copied to the device asynchronously
    (the loader pins memory), so the time blocked here is the data wait."""
    it = iter(loader)
    while True:
        step = []
        for _ in range(n_micro):
            try:
                batch = next(it)
            except StopIteration:
                return
            step.append({"images": batch["images"].to(device, non_blocking=True),
                         "text": batch["text"].to(device, non_blocking=True), "keys": batch["keys"]})
        yield step
