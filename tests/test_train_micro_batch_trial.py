"""`micro_batch: auto`'s trial step: an out-of-memory error in the stage's first step halves the
micro-batch before any update, records why, and the stage then trains exactly as a run started
at the halved size (tiny model, CPU, single engine)."""
import json

import pytest
import torch

from clipav2 import exitcodes
from clipav2.config import load_config
from clipav2.models.convert import load_model
from clipav2.micro_batch import RECORD
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # whole training runs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_demo(tmp_path_factory)


def _pretrain(tmp_path, data, name: str, micro_batch) -> dict:
    from clipav2.train.loop import train

    run = tmp_path / name
    path = tiny_recipe(tmp_path / f"{name}.yaml", data, run, **{"parallel.micro_batch": micro_batch,
                                                                "eval.at_stage_end": False})
    assert train(load_config(path, world_size=1, check_data=True), only_stage="pretrain") == exitcodes.OK
    return run, load_model(run / "pretrain.safetensors").state_dict()


def test_an_oom_in_the_trial_step_halves_the_micro_batch(tmp_path, data, monkeypatch, capsys):
    from clipav2.parallel.base import Engine

    real_backward = Engine.backward
    calls = []

    def backward_that_runs_out_once(self, loss, last):  # the first micro-batch's gradients exist, then the error
        real_backward(self, loss, last)
        calls.append(sum(p.grad is not None for p in self.module.parameters()))
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Engine, "backward", backward_that_runs_out_once)
    run, halved = _pretrain(tmp_path, data, "auto", "auto")
    assert calls[0] > 0 and len(calls) == 1 + 2 * 4  # the failed trial, then 4 steps of 2 micro-steps
    assert "micro-batch trial: out of memory; halved to 8 (2 micro-steps" in capsys.readouterr().out
    (record,) = json.loads((run / RECORD).read_text()).values()
    assert (record["micro_batch"], record["micro_steps"], record["halved"]) == (8, 2, ["16: out of memory"])

    monkeypatch.setattr(Engine, "backward", real_backward)
    _, started_at_8 = _pretrain(tmp_path, data, "fixed", 8)
    assert halved.keys() == started_at_8.keys()
    for key, value in started_at_8.items():
        assert torch.equal(halved[key], value), key
