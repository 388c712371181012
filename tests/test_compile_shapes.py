"""Compiled blocks on the CPU inductor (tiny widths, one block per tower: inductor's C++ build
of the four graphs is most of this test's time): every graph is static, one per tower and
stage shape, with no graph break; more steps compile nothing; a stage change compiles its new
shapes once; evaluation under `eager()` compiles nothing."""
import dataclasses
import time

import pytest
import torch
from torch._dynamo.utils import calculate_time_spent, counters

from clipav2.models.arch import get_arch
from clipav2.models.clip import CLIP
from clipav2.parallel.apply import apply_ac, apply_compile, eager


def _model(image_size: int, text_len: int) -> CLIP:
    arch = get_arch("tiny", image_size=image_size, context_length=text_len)
    one = dict(depth=1)
    model = CLIP(dataclasses.replace(arch, vision=dataclasses.replace(arch.vision, **one),
                                     text=dataclasses.replace(arch.text, **one)))
    return apply_compile(apply_ac(model, "none"))


def _step(model, batch: int) -> None:
    px, length = model.visual.image_size, model.text.context_length
    image, text, scale = model(torch.randn(batch, 3, px, px), torch.randint(0, 1000, (batch, length)))
    (image @ text.T * scale).logsumexp(1).mean().backward()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.mark.slow  # inductor compiles every block shape
def test_static_graphs_one_per_tower_and_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold compile, as on a new node
    torch._dynamo.reset()
    counters.clear()
    seen = []
    for stage, (px, length) in enumerate([(32, 16), (16, 8)]):  # a stage change: image size and text length
        model = _model(px, length)
        for step in range(3):
            before, t = calculate_time_spent().get("total_wall_time", 0.0), time.perf_counter()
            _step(model, batch=4)
            seen.append(_graphs())
            print(f"stage {stage} step {step}: {time.perf_counter() - t:.1f} s, graphs {_graphs()}, "
                  f"compiling {calculate_time_spent().get('total_wall_time', 0.0) - before:.1f} s")
        with torch.no_grad(), eager():  # evaluation: other batch sizes, no grad, nothing compiled
            model.encode_image(torch.randn(3, 3, px, px))
            model.encode_text(torch.randint(0, 1000, (5, length)))
        assert _graphs() == seen[-1]
    assert seen == [2, 2, 2, 4, 4, 4]  # the image and the text tower's graph, per stage
    assert dict(counters["graph_break"]) == {}
