"""Gradient accumulation keeps the InfoNCE loss over the whole global batch: one optimizer step
with 2 micro-steps of 8 equals one step over the 16 samples at once (loss, weights, temperature)."""
import copy

import torch

from clipav2.config import load_config
from clipav2.parallel.env import World
from clipav2.train.stages import build_stage_model
from clipav2.stage import resolve
from clipav2.train.step import TrainStep

RECIPE = """\
model: {name: tiny}
parallel: {micro_batch: MICRO, precision: fp32}
stages:
  - {name: s, image_size: 32, text_len: 16, samples: 64, global_batch: 16, lr_base: 2.0e-2, warmup_steps: 0}
"""


def _one_step(tmp_path, micro, model, batch):
    path = tmp_path / f"r{micro}.yaml"
    path.write_text(RECIPE.replace("MICRO", str(micro)))
    cfg = load_config(path, world_size=1)
    runner = TrainStep(cfg, resolve(cfg, 0, 1), World(), copy.deepcopy(model))
    parts = [{k: v[i : i + micro] for k, v in batch.items()} for i in range(0, 16, micro)]
    # lr_at(0) with no warmup is the peak: a real update
    result = runner.run(parts, step=1)
    return result, runner.engine.model.state_dict()


def test_accumulation_equals_one_big_batch(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("MICRO", "16"))
    model = build_stage_model(load_config(path), 0, tmp_path)
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g),
             "text": torch.randint(1000, 5000, (16, 16), generator=g)}
    whole, w1 = _one_step(tmp_path, 16, model, batch)
    accum, w2 = _one_step(tmp_path, 8, model, batch)
    assert abs(whole.loss - accum.loss) < 1e-5
    assert abs(whole.grad_norm - accum.grad_norm) < 1e-4 * max(1.0, whole.grad_norm)
    changed = 0
    for key in w1:
        a, b = w1[key], w2[key]
        if key.endswith("attn.qkv.bias"):
            # the key bias gets no gradient (softmax ignores a constant shift): rounding noise
            # there is what Adam normalises to a full step, so compare the query and value parts
            width = a.shape[0] // 3
            a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=key)
        changed += not torch.equal(w1[key], model.state_dict()[key])
    assert changed > 10  # the step really moved the weights


def test_non_finite_lr_on_the_first_step_applies_nothing(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("MICRO", "16"))
    cfg = load_config(path, world_size=1)
    model = build_stage_model(cfg, 0, tmp_path)
    before = copy.deepcopy(model.state_dict())
    runner = TrainStep(cfg, resolve(cfg, 0, 1), World(), model)
    runner.lr = lambda: float("inf")  # what a broken schedule would hand the step
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g),
             "text": torch.randint(1000, 5000, (16, 16), generator=g)}
    result = runner.run([batch], step=1)
    assert bool(result.skipped)
    for key, value in runner.engine.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(not s for s in runner.optimizer.state.values()) or all(
        torch.count_nonzero(t) == 0 for s in runner.optimizer.state.values() for k, t in s.items() if k != "step")
