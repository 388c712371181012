"""Skipped-record counts are the sum over ranks, by reason: the metrics record at a checkpoint
step equals the sum of what each rank saved in its own checkpoint state, and the stage ends with
a line of the totals. Two CPU ranks (torchrun, gloo) over shards with a bad record in every 8."""
import json

import pytest

from clipav2.data.shards import ShardSink, expand_urls, iter_records
from test_train_strategies import torchrun
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def _with_bad_records(src, out):
    with ShardSink(out, maxcount=100) as sink:
        n = 0
        for url in expand_urls(str(src)):
            for key, record in iter_records(url, []):
                n += 1
                if n % 8 == 0:
                    sink.write({"__key__": f"bad{n:05d}", "jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "txt": "x"})
                sink.write({"__key__": key, "jpg": record["jpg"], "txt": record["txt"].decode()})


def test_skip_counts_are_summed_over_ranks(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    _with_bad_records(data / "train", tmp_path / "shards")
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", data, run,
                         **{"data.train": str(tmp_path / "shards"), "stages.pretrain.samples": 64,
                            "checkpoint.every_steps": 2, "eval.at_stage_end": False})
    proc = torchrun(recipe, "parallel.strategy=ddp", "parallel.micro_batch=8", "--stage", "pretrain")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    at2 = next(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] == 2)
    per_rank = []
    for rank in (0, 1):
        state = json.loads((run / "checkpoints" / "pretrain" / "step_00000002" / "extra" / f"rank_{rank}.json").read_text())
        per_rank.append(sum(s["skipped"].get("corrupt_image", 0) for s in state["data"]["streams"]))
    assert per_rank[0] > 0 and per_rank[1] > 0
    assert at2["skipped_by_reason"] == {"corrupt_image": sum(per_rank)}
    assert at2["skipped_samples"] == sum(per_rank)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("[pretrain] skipped records:"))
    assert int(line.split("skipped records: ")[1].split()[0]) >= sum(per_rank) and "corrupt_image" in line
