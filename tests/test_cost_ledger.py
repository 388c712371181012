"""The GPU-hour ledger with a fake clock: accrual by kind, persistence, resume without double
counting, lost work after resuming from an older checkpoint, and bad input."""
import json

import pytest

from clipav2.cost.ledger import FORMAT_VERSION, KINDS, Ledger, LedgerError, read


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def steps(ledger, clock, stage, n, first_step, batch, step_s=1.0, wait_s=0.25):
    """`n` training steps: each waits for data, then computes; progress as the loop reports it."""
    for i in range(n):
        with ledger.track("data_wait", stage):
            clock.advance(wait_s)
        with ledger.track("train", stage):
            clock.advance(step_s)
        ledger.set_progress(stage, first_step + i + 1, (first_step + i + 1) * batch)


def test_accrual_by_kind_is_wall_seconds_times_gpus():
    clock = FakeClock()
    led = Ledger(gpus=8, price_per_gpu_hour=2.0, clock=clock)
    with led.track("startup", "pretrain"):
        clock.advance(30)
    steps(led, clock, "pretrain", 10, 0, batch=64)
    with led.track("eval", "pretrain"):
        clock.advance(12)
    with led.track("checkpoint", "pretrain"):
        clock.advance(6)
    s = led.stages["pretrain"]
    assert s["gpu_seconds"] == {"train": 80.0, "data_wait": 20.0, "eval": 96.0, "checkpoint": 48.0,
                                "startup": 240.0, "lost": 0.0}
    assert led.total_gpu_seconds == pytest.approx(8 * (30 + 12.5 + 12 + 6))
    assert led.total_usd == pytest.approx(led.total_gpu_seconds / 3600 * 2.0)
    assert led.mean_seconds("checkpoint") == 6.0
    assert (s["steps"], s["samples"]) == (10, 640)
    summary = led.summary()
    assert summary["gpu_hours"] == pytest.approx(sum(summary["gpu_hours_by_kind"].values()))


def test_track_charges_time_even_when_the_block_raises():
    clock = FakeClock()
    led = Ledger(gpus=2, price_per_gpu_hour=1.0, clock=clock)
    with pytest.raises(RuntimeError):
        with led.track("train", "s"):
            clock.advance(5)
            raise RuntimeError("step failed")
    assert led.stages["s"]["gpu_seconds"]["train"] == 10.0


def test_write_is_atomic_json_with_a_format_version(tmp_path):
    clock = FakeClock()
    led = Ledger(gpus=4, price_per_gpu_hour=3.0, clock=clock, accelerator="h100")
    steps(led, clock, "pretrain", 3, 0, batch=8)
    path = led.write(tmp_path, projection={"projected_total_usd": 1.0})
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT_VERSION and doc["accelerator"] == "h100"
    assert doc["totals"]["usd"] == pytest.approx(led.total_usd)
    assert doc["projection"] == {"projected_total_usd": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no temporary file left behind
    again = Ledger(4, 3.0, clock)
    again.load_state_dict(read(tmp_path))
    assert again.stages == led.stages


def _crash_scenario(tmp_path, clock):
    """100 steps of 1.25 s; a checkpoint after step 40 (the snapshot, then a 3 s write); the
    ledger written to RUN_DIR every 10 steps; the process dies after step 100's write."""
    led = Ledger(gpus=8, price_per_gpu_hour=1.5, clock=clock)
    with led.track("startup", "pretrain"):
        clock.advance(20)
    checkpoint = None
    for block in range(10):
        steps(led, clock, "pretrain", 10, block * 10, batch=32)
        if block == 3:
            checkpoint = led.state_dict()  # what goes into the checkpoint
            with led.track("checkpoint", "pretrain"):
                clock.advance(3)
        led.write(tmp_path)
    return led, checkpoint


def test_resume_from_an_older_checkpoint_counts_redone_steps_as_lost(tmp_path):
    clock = FakeClock()
    before_crash, checkpoint = _crash_scenario(tmp_path, clock)
    resumed = Ledger.resume(checkpoint, tmp_path, gpus=8, price=1.5, clock=clock)
    s = resumed.stages["pretrain"]
    # nothing forgotten, nothing counted twice
    assert resumed.total_gpu_seconds == pytest.approx(before_crash.total_gpu_seconds)
    assert resumed.total_usd == pytest.approx(before_crash.total_usd)
    # the 60 steps after the snapshot will run again: their time is lost, not training
    assert s["gpu_seconds"]["train"] == pytest.approx(8 * 40 * 1.0)
    assert s["gpu_seconds"]["data_wait"] == pytest.approx(8 * 40 * 0.25)
    assert s["gpu_seconds"]["lost"] == pytest.approx(8 * 60 * 1.25)
    assert s["gpu_seconds"]["checkpoint"] == pytest.approx(8 * 3)  # the write itself stays a checkpoint
    assert s["gpu_seconds"]["startup"] == pytest.approx(8 * 20)
    assert (s["steps"], s["samples"], s["lost_steps"]) == (40, 40 * 32, 60)


def test_a_second_crash_before_the_next_checkpoint_accumulates_lost_work(tmp_path):
    clock = FakeClock()
    first, checkpoint = _crash_scenario(tmp_path, clock)
    resumed = Ledger.resume(checkpoint, tmp_path, gpus=8, price=1.5, clock=clock)
    with resumed.track("startup", "pretrain"):
        clock.advance(10)
    steps(resumed, clock, "pretrain", 30, 40, batch=32)  # steps 41..70 again
    resumed.write(tmp_path)
    spent = resumed.total_gpu_seconds
    again = Ledger.resume(checkpoint, tmp_path, gpus=8, price=1.5, clock=clock)
    s = again.stages["pretrain"]
    assert again.total_gpu_seconds == pytest.approx(spent)
    assert spent == pytest.approx(first.total_gpu_seconds + 8 * (10 + 30 * 1.25))
    assert s["lost_steps"] == 60 + 30
    assert s["gpu_seconds"]["lost"] == pytest.approx(8 * 90 * 1.25)
    assert s["gpu_seconds"]["startup"] == pytest.approx(8 * 30)


def test_resume_from_the_newest_checkpoint_after_the_last_log_loses_nothing(tmp_path):
    clock = FakeClock()
    led = Ledger(gpus=2, price_per_gpu_hour=1.0, clock=clock)
    steps(led, clock, "pretrain", 10, 0, batch=4)
    led.write(tmp_path)
    steps(led, clock, "pretrain", 5, 10, batch=4)
    checkpoint = led.state_dict()  # newer than ledger.json
    resumed = Ledger.resume(checkpoint, tmp_path, gpus=2, price=1.0, clock=clock)
    assert resumed.stages == led.stages
    assert resumed.stages["pretrain"]["lost_steps"] == 0


def test_a_crash_before_the_first_checkpoint_keeps_the_time_as_lost(tmp_path):
    clock = FakeClock()
    led = Ledger(gpus=4, price_per_gpu_hour=1.0, clock=clock)
    with led.track("startup", "pretrain"):
        clock.advance(5)
    steps(led, clock, "pretrain", 8, 0, batch=4)
    led.write(tmp_path)
    resumed = Ledger.resume(None, tmp_path, gpus=4, price=1.0, clock=clock)
    s = resumed.stages["pretrain"]
    assert resumed.total_gpu_seconds == pytest.approx(led.total_gpu_seconds)
    assert s["gpu_seconds"]["train"] == 0 and s["lost_steps"] == 8 and s["steps"] == 0
    assert s["gpu_seconds"]["startup"] == pytest.approx(20)


def test_a_new_world_size_after_resume_charges_the_new_gpu_count(tmp_path):
    clock = FakeClock()
    led = Ledger(gpus=8, price_per_gpu_hour=1.0, clock=clock)
    steps(led, clock, "pretrain", 4, 0, batch=4)
    state = led.state_dict()
    resumed = Ledger.resume(state, tmp_path, gpus=16, price=2.0, clock=clock)
    before = resumed.total_usd
    with resumed.track("train", "pretrain"):
        clock.advance(10)
    assert resumed.total_usd - before == pytest.approx(16 * 10 / 3600 * 2.0)


def test_bad_input_is_named(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        read(tmp_path)
    (tmp_path / "ledger.json").write_text(json.dumps({"format": FORMAT_VERSION + 1, "stages": {}}))
    with pytest.raises(LedgerError, match="newer"):
        read(tmp_path)
    (tmp_path / "ledger.json").write_text("{not json")
    with pytest.raises(LedgerError, match="unreadable"):
        read(tmp_path)
    led = Ledger(1, 1.0)
    with pytest.raises(ValueError, match="unknown kind"):
        led.add("s", "coffee", 1.0)
    with pytest.raises(ValueError, match="negative"):
        led.add("s", "train", -1.0)
    with pytest.raises(ValueError, match="price"):
        Ledger(1, -1.0)
    assert set(KINDS) == {"train", "eval", "checkpoint", "startup", "data_wait", "lost"}
