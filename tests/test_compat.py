"""One test per library internal we rely on (clipav2/compat.py): each fails loudly when an
upgrade of torch or DeepSpeed changes the behaviour we depend on."""
import inspect

import pytest
import torch

from clipav2 import compat


@pytest.mark.parametrize("skip", [True, False])
def test_fused_adamw_honours_found_inf(skip):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    before = w.detach().clone()
    opt = torch.optim.AdamW([w], lr=0.1, fused=True)
    w.grad = torch.full_like(w, float("nan")) if skip else torch.ones_like(w)
    compat.set_found_inf(opt, torch.tensor(skip))
    opt.step()
    assert torch.equal(w.detach(), before) == skip
    assert float(opt.state[w]["step"]) == (0 if skip else 1)


def test_private_fused_adamw_kernel_is_what_adamw_fused_runs():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    grad = torch.randn(5, 3)
    opt = torch.optim.AdamW([w], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.2, fused=True)
    p, m, v, step = w.detach().clone(), torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(())
    for _ in range(3):
        w.grad = grad.clone()
        opt.step()
        step += 1  # the caller counts the step before the kernel runs, as torch's AdamW does
        compat.fused_adamw_([p], [grad.clone()], [m], [v], [step], lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8,
                            weight_decay=0.2, found_inf=None)
    assert torch.equal(p, w.detach())
    assert torch.equal(m, opt.state[w]["exp_avg"]) and torch.equal(v, opt.state[w]["exp_avg_sq"])


def test_dcp_reader_names_its_index_file(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"x": torch.arange(3.0)}, storage_writer=dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    path = compat.dcp_metadata_path(dcp.FileSystemReader(str(tmp_path)))
    assert str(path).endswith(".metadata") and (tmp_path / ".metadata").is_file()
    assert str(path) == str(tmp_path / ".metadata")
    # before torch 2.9 the reader has no _get_metadata_path: the fallback must name the same file
    old_reader = type("Reader", (), {"fs": dcp.FileSystemReader(str(tmp_path)).fs, "path": str(tmp_path)})()
    assert str(compat.dcp_metadata_path(old_reader)) == str(path)


@pytest.mark.parametrize("flatten", [True, False])
def test_dcp_item_lands_where_the_default_planner_puts_it(flatten):
    import io

    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import Metadata

    def planner():
        p = DefaultLoadPlanner(flatten_state_dict=flatten)
        p.set_up_planner({"extra": {"step": 0, "data": {"pos": [0, 0]}}, "w": torch.zeros(2)}, Metadata({}), True)
        return p

    ours, theirs = planner(), planner()
    fqn = "extra.data.pos" if flatten else "extra"
    value = [3, 4] if flatten else {"step": 7, "data": {"pos": [3, 4]}}
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    theirs.load_bytes(type("Item", (), {"dest_index": type("Index", (), {"fqn": fqn})()})(), buffer)
    compat.dcp_store_item(ours, fqn, value)
    where = "original_state_dict" if flatten else "state_dict"  # the caller's nested dict, or the flat one
    assert getattr(ours, where)["extra"] == getattr(theirs, where)["extra"]
    assert getattr(ours, where)["extra"]["data"]["pos"] == [3, 4]


def test_deepspeed_torch_checkpoint_engine_loads_through_load_path_map_location():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from deepspeed.runtime.engine import DeepSpeedEngine

    assert "self.checkpoint_engine.load(" in inspect.getsource(DeepSpeedEngine)  # loads go through it
    params = list(inspect.signature(TorchCheckpointEngine.load).parameters)
    assert params[:3] == ["self", "path", "map_location"], params

    class Engine:  # what compat needs of a DeepSpeedEngine: its checkpoint_engine attribute
        checkpoint_engine = TorchCheckpointEngine.__new__(TorchCheckpointEngine)

    calls = []

    def subclass(cls):
        class Safe(cls):
            def load(self, path, map_location=None):
                calls.append(path)

        return Safe

    engine = Engine()
    assert compat.swap_checkpoint_engine(engine, subclass)
    engine.checkpoint_engine.load("x", map_location="cpu")
    assert calls == ["x"] and isinstance(engine.checkpoint_engine, TorchCheckpointEngine)


def test_loader_workers_stop_when_asked_though_they_ignore_sigterm():
    import multiprocessing

    from torch.utils.data import DataLoader

    from clipav2.signals import quiet_worker

    before = set(multiprocessing.active_children())
    batches = iter(DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True,
                              worker_init_fn=quiet_worker))
    next(batches)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 1
    compat.stop_loader_workers(batches)
    assert not workers & set(multiprocessing.active_children())
    compat.stop_loader_workers(iter(DataLoader(list(range(4)))))  # a single-process iterator has none
