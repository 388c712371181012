"""`parallel.micro_batch: auto` on the CPU: the memory model's arithmetic against a hand count,
the largest divisor of the per-rank batch that fits, the record in RUN_DIR reused, and the
explanation of what accumulation costs."""
import json

from clipav2.config import load_config
from clipav2.stage import resolve
from clipav2.models.arch import get_arch
from clipav2.models.flops import count_params
from clipav2 import micro_batch as mb
from clipav2.parallel.env import World


def _cfg(*extra):
    return load_config(None, ["model.name=tiny", "parallel.micro_batch=auto", "stages=[{name: s}]", "stages.s.samples=96",
                              "stages.s.global_batch=48", "stages.s.image_size=32", "stages.s.text_len=16", *extra])


def test_the_memory_model_by_hand():
    cfg = _cfg("model.checkpointing=all")
    a = get_arch("tiny")  # 2 + 2 blocks of width 32; 16 patches + the class token; 16 text tokens
    n = count_params(a)["total"]
    assert mb.fixed_bytes(cfg, 2) == 16 * n
    assert mb.fixed_bytes(_cfg("parallel.strategy=fsdp"), 2) == 8 * n
    # a checkpointed block keeps its input: both towers' residual streams are fp32 under bf16 autocast
    # (tests/test_precision.py checks the dtype entering every block), bf16 under bf16_params
    stage = resolve(cfg, 0, 2)
    one, two = (mb.step_bytes(cfg, stage, 2, m, "bf16_autocast") for m in (1, 2))
    assert two["kept"] - one["kept"] == 2 * (17 * a.vision.width * 4 + 16 * a.text.width * 4)
    one, two = (mb.step_bytes(cfg, stage, 2, m, "bf16_params") for m in (1, 2))
    assert two["kept"] - one["kept"] == 2 * (17 * a.vision.width * 2 + 16 * a.text.width * 2)
    assert one["inputs"] == two["inputs"] == 24 * 3 * 32 * 32 * (1 + 4)  # the whole per-rank batch, uint8 + fp32
    assert one["loss"] == 4 * 24 * 48 * 4 + 2 * 48 * a.embed_dim * 4  # 2 logits + 2 log-softmaxes, gathered features


def test_the_largest_divisor_that_fits_and_why():
    cfg = _cfg()
    stage = resolve(cfg, 0, 2)
    device = mb.step_bytes(cfg, stage, 2, 8, "fp32")["total"] / (1 - mb.RESERVE)  # room for 8 (not 12)
    fit = mb.choose(cfg, stage, 2, device, "fp32")
    assert (fit["per_rank_batch"], fit["micro_batch"], fit["micro_steps"]) == (24, 8, 3)
    assert "3 micro-steps of accumulation" in mb.explain("s", fit) and "no-grad forward" in mb.explain("s", fit)
    roomy = mb.choose(cfg, stage, 2, 2**40, "fp32")
    assert roomy["micro_batch"] == 24 and "no gradient accumulation" in mb.explain("s", roomy)


def test_found_once_and_recorded(tmp_path):
    cfg = _cfg()
    stage = resolve(cfg, 0, 1)
    assert stage.grad_accum == 1  # auto before fitting: the whole per-rank batch
    fit = mb.fit_micro_batch(cfg, stage, World(), tmp_path)
    assert fit["micro_batch"] == 48  # the CPU: the per-rank batch
    record = json.loads((tmp_path / mb.RECORD).read_text())
    (key,) = record
    record[key]["micro_batch"] = 16  # a recorded fit is reused, not searched again
    (tmp_path / mb.RECORD).write_text(json.dumps(record))
    assert mb.fit_micro_batch(cfg, stage, World(), tmp_path)["micro_batch"] == 16
