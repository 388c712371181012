"""One run per RUN_DIR: the lock refuses a live holder (naming it), takes over from a dead one on
this host at once and from a silent one on another host after its lease, and exactly one of
several racing runs wins a stale lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from clipav2.train.runlock import LOCK, RunDirBusy, RunLock
from support import ENV, small_demo, tiny_recipe


def _quiet(msg):
    pass


def _write_lock(run, host, pid, since=1_700_000_000.0):
    run.mkdir(parents=True, exist_ok=True)
    pidns = os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else None
    (run / LOCK).write_text(json.dumps({"host": host, "pid": pid, "since": since, "token": "old", "pidns": pidns}))


def test_a_live_holder_is_named_and_refused(tmp_path):
    with RunLock(tmp_path, heartbeat_s=0.05, say=_quiet):
        with pytest.raises(RunDirBusy) as e:
            RunLock(tmp_path, say=_quiet).acquire()
    msg = str(e.value)
    assert f"host {socket.gethostname()} pid {os.getpid()} since 20" in msg and "\n" not in msg
    assert not (tmp_path / LOCK).exists()  # released on exit
    RunLock(tmp_path, say=_quiet).acquire().release()


def test_a_creator_stopped_while_writing_its_record_leaves_no_empty_lock(tmp_path, monkeypatch):
    """The lock never exists without its record: another run would otherwise wait out the whole
    lease before taking over a file it cannot read."""
    import clipav2.train.runlock as runlock

    def die(fd):
        assert not (tmp_path / LOCK).exists()  # mid-write: nothing for another run to see yet
        raise KeyboardInterrupt

    monkeypatch.setattr(runlock.os, "fsync", die)
    with pytest.raises(KeyboardInterrupt):
        RunLock(tmp_path, say=_quiet).acquire()
    monkeypatch.undo()
    assert not (tmp_path / LOCK).exists() and list(tmp_path.iterdir()) == []
    RunLock(tmp_path, say=_quiet).acquire().release()  # the next run starts at once


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, socket.gethostname(), gone.pid)
    t = time.monotonic()
    lock = RunLock(tmp_path, lease_s=30, say=_quiet).acquire()
    assert time.monotonic() - t < 5  # no lease wait
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_lock_is_taken_once_its_heartbeat_stops(tmp_path):
    _write_lock(tmp_path, "node-that-was-preempted", 1234)
    said = []
    t = time.monotonic()
    lock = RunLock(tmp_path, heartbeat_s=0.1, lease_s=0.6, say=said.append).acquire()
    assert time.monotonic() - t >= 0.6
    assert "node-that-was-preempted" in said[0] and "waiting up to 0.6 s" in said[0]
    lock.release()


def test_another_hosts_beating_lock_is_refused(tmp_path):
    _write_lock(tmp_path, "node-still-running", 1234)
    stop = threading.Event()

    def beat():
        while not stop.wait(0.05):
            os.utime(tmp_path / LOCK)

    threading.Thread(target=beat, daemon=True).start()
    try:
        with pytest.raises(RunDirBusy, match="host node-still-running pid 1234 since 2023-11-14"):
            RunLock(tmp_path, heartbeat_s=0.1, lease_s=0.6, say=_quiet).acquire()
    finally:
        stop.set()


@pytest.mark.parametrize("round_", range(5))
def test_exactly_one_of_racing_runs_wins_a_stale_lock(tmp_path, round_):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, socket.gethostname(), gone.pid)
    won, refused, go = [], [], threading.Barrier(8)

    def contend():
        lock = RunLock(tmp_path, heartbeat_s=60, say=_quiet)
        go.wait()
        try:
            won.append(lock.acquire())
        except RunDirBusy:
            refused.append(lock)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert json.loads((tmp_path / LOCK).read_text())["token"] == won[0].token
    assert not (tmp_path / (LOCK + ".takeover")).exists()
    won[0].release()


@pytest.mark.slow
def test_two_trains_on_one_run_dir(tmp_path_factory, tmp_path):
    """The second `clipav2 train` stops with one line naming the first; the first is unharmed."""
    data = small_demo(tmp_path_factory)
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", data, run, **{"eval.at_stage_end": False})
    env = dict(os.environ, OMP_NUM_THREADS="1", **{k: os.environ.get(k, v) for k, v in ENV.items()})
    cmd = [sys.executable, "-m", "clipav2", "train", str(recipe), "--stage", "pretrain"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)  # alive but paused: the second must see it hold the lock
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid} since" in lines[0] and "in use by another run" in lines[0], second.stderr
    assert first.returncode == 0, err[-3000:]
    assert (run / "pretrain.safetensors").is_file() and not (run / LOCK).exists()
