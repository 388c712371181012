"""open_clip's own training step at our shapes, for the side-by-side: open_clip's model of the same
name, its ClipLoss, torch AdamW with its weight-decay split, bf16 autocast on CUDA (fp32 on the
CPU), grad checkpointing when ours checkpoints, and the logit-scale clamp its loop applies.
Architectures open_clip has no name for (tiny, demo) are built from the same numbers."""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import torch

from clipav2.models.arch import ClipArch

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def open_clip_cfg(arch: ClipArch, image_size: int, text_len: int, patch_dropout: float) -> dict:
    """Our architecture as open_clip's CLIP(**cfg) arguments: the model config an export writes
    (clipav2.models.openclip_folder.model_cfg: v2 and v1 rows, their numerics) at the stage's
    shapes. clipa_torch's pool over every token (the v1 L/16 GAP rows) is open_clip's patch
    average here: the same cost."""
    from clipav2.models.openclip_folder import model_cfg

    if arch.vision.pool == "avg_with_cls":
        arch = replace(arch, vision=replace(arch.vision, pool="avg"))
    cfg = model_cfg(arch)
    cfg["vision_cfg"].update(image_size=image_size, patch_dropout=patch_dropout)
    cfg["text_cfg"].update(context_length=text_len)
    return cfg


def build_open_clip(arch: ClipArch, image_size: int, text_len: int, patch_dropout: float, device: torch.device):
    """open_clip.create_model(name) where open_clip knows the name, else open_clip.CLIP(**cfg)."""
    import open_clip

    if arch.name in open_clip.list_models():
        return open_clip.create_model(arch.name, device=device, force_image_size=image_size,
                                      force_context_length=text_len, force_patch_dropout=patch_dropout or None,
                                      output_dict=True, pretrained_text=False)
    return open_clip.CLIP(**open_clip_cfg(arch, image_size, text_len, patch_dropout), output_dict=True).to(device)


def _param_groups(model, weight_decay: float):
    # open_clip's training/main.py: no decay for gains, biases, norms and the logit scale
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in params if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in params if not exclude(n, p)], "weight_decay": weight_decay}]


def patch_dropout(stage) -> float:
    """open_clip's only token reduction is random patch dropout, which keeps int(N (1 - p)) of N
    patches: the p that keeps the stage's count (clipav2.stage.Stage.kept_image_tokens) whatever its
    strategy, so grid and block stages are compared at the same tokens, drawn at random."""
    if stage.kept_image_tokens == stage.n_patches:
        return 0.0
    return 1 - (stage.kept_image_tokens + 0.5) / stage.n_patches


def open_clip_step(stage, device: torch.device, checkpointing: bool, precision: str):
    """open_clip's model for a resolved stage and its optimizer; return `step(micro_batches) -> loss
    tensor` (no sync)."""
    from open_clip.loss import ClipLoss

    model = build_open_clip(stage.arch, stage.image_size, stage.text_len, patch_dropout(stage), device)
    model.train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(_param_groups(model, stage.weight_decay), lr=stage.peak_lr, betas=stage.betas,
                            eps=stage.eps)
    loss_fn = ClipLoss()
    mean = torch.tensor(_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(_STD, device=device).view(1, 3, 1, 1) * 255
    if precision.startswith("bf16"):
        autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext

    def step(micro_batches):
        opt.zero_grad(set_to_none=True)
        total = None
        for mb in micro_batches:
            images = (mb["images"].float() - mean) / std
            with autocast():
                out = model(images, mb["text"])
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"]) / len(micro_batches)
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return total

    step.model = model
    return step
