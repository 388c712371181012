"""One run per RUN_DIR: an exclusive lock held for the life of `clipav2 train`.

    RUN_DIR/.lock     {"host", "pid", "since", "token"}: created with O_CREAT | O_EXCL, its
                      modification time refreshed every `heartbeat_s` by the holder

Why not fcntl/flock: on NFS they depend on the lock daemon (often off, or silently local-only
with `nolock`), on Lustre on the `flock` mount option, and a lock held by a dead node lingers
until the server notices. An exclusive create is atomic on local disks, NFSv3+ and Lustre, and a
file survives for all to read: who holds the run, since when.

A lock whose holder is gone is taken over:
- same host: the holder's pid no longer exists (or is another process now): at once;
- another host (a requeued SLURM job landing on another node): once its heartbeat has not moved
  for `lease_s` seconds, measured by the waiting process (no clocks compared across nodes; each
  look opens the file, which on NFS revalidates its attributes: close-to-open consistency).
Taking over renames the stale file aside first (atomic) and checks that what it moved is the
stale lock it judged, so two waiting runs cannot both win.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

LOCK = ".lock"


class RunDirBusy(Exception):
    """Another live run holds RUN_DIR; the message names it."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a live holder from a reused pid), None if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    return started is None or _start_time(pid) in (None, started)


def describe(holder: dict | None, path: Path) -> str:
    if not holder:
        return f"{path} exists (holder unknown: the file is empty or unreadable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return f"host {holder.get('host')} pid {holder.get('pid')} since {since}"


class RunLock:
    def __init__(self, run_dir, heartbeat_s: float = 10.0, lease_s: float = 60.0, say=print):
        self.path = Path(run_dir) / LOCK
        self.heartbeat_s, self.lease_s, self.say = heartbeat_s, lease_s, say
        self.token = uuid.uuid4().hex
        self.lost = False  # set if another run took the lock over (we looked stale to it)
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> "RunLock":
        """Hold the lock or raise RunDirBusy naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="run-dir-lock", daemon=True)
                self._thread.start()
                return self
            raw = self._read_raw()
            if raw is None:
                continue  # released meanwhile
            holder = _parse(raw)
            if not self._stale(holder, raw):
                raise RunDirBusy(f"{self.path.parent} is in use by another run: {describe(holder, self.path)}")
            self._take_over(raw)
        raise RunDirBusy(f"{self.path.parent}: could not take the lock {self.path} (other runs keep taking it)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._mine():
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    # ------------------------------------------------------------------ pieces
    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
                  "since": time.time(), "token": self.token}
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read_raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _heartbeat(self) -> int | None:
        try:
            with open(self.path, "rb") as f:  # open, then fstat: fresh attributes on NFS
                return os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None

    def _stale(self, holder: dict | None, raw: bytes) -> bool:
        if holder and holder.get("host") == socket.gethostname():
            return not _alive(int(holder.get("pid", -1)), holder.get("started"))
        first = self._heartbeat()
        self.say(f"{self.path.parent} is locked by {describe(holder, self.path)}; "
                 f"waiting up to {self.lease_s:g} s for its heartbeat")
        deadline = time.monotonic() + self.lease_s
        while time.monotonic() < deadline:
            time.sleep(min(self.heartbeat_s, max(deadline - time.monotonic(), 0)))
            if self._heartbeat() != first or self._read_raw() != raw:
                return False  # beating (or released and retaken): alive
        return True

    def _take_over(self, raw: bytes) -> None:
        aside = self.path.with_name(f"{LOCK}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else moved it first
        if aside.read_bytes() != raw:  # we moved a fresh lock another run had just made: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _mine(self) -> bool:
        holder = _parse(self._read_raw() or b"")
        return bool(holder) and holder.get("token") == self.token

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._mine():
                if not self.lost:
                    self.lost = True
                    self.say(f"warning: the lock {self.path} was taken over by another run; this run's "
                             "checkpoints may now mix with it")
                continue
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass


def _parse(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def lock_run_dir(run_dir, world) -> RunLock | None:
    """The main rank takes the lock (held until `release()`); every rank raises RunDirBusy if it
    could not. Collective."""
    from clipav2.parallel.env import any_rank

    lock, busy = None, None
    if world.is_main:
        try:
            lock = RunLock(run_dir).acquire()
        except RunDirBusy as e:
            busy = e
    if any_rank(world, busy is not None):
        raise busy or RunDirBusy(f"{run_dir} is in use by another run (rank 0 says who)")
    return lock
