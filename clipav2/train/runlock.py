"""One run per RUN_DIR: an exclusive lock held for the life of `clipav2 train`.

    RUN_DIR/.lock     {"host", "pid", "since", "token"}: created exclusively, with its record
                      (a hard link of a private file), its modification time refreshed every
                      `heartbeat_s` by the holder

Why not fcntl/flock: on NFS they depend on the lock daemon (often off, or silently local-only
with `nolock`), on Lustre on the `flock` mount option, and a lock held by a dead node lingers
until the server notices. An exclusive create is atomic on local disks, NFSv3+ and Lustre, and a
file survives for all to read: who holds the run, since when. (An exclusive `link` is the
classic NFS-safe lock: the same guarantee, and the file never exists without its record.)

A lock whose holder is gone is taken over:
- same host and pid namespace: the holder's pid no longer exists (or is another process now): at once;
- another host (a requeued SLURM job landing on another node): once its heartbeat has not moved
  for `lease_s` seconds, measured by the waiting process (no clocks compared across nodes; each
  look opens the file, which on NFS revalidates its attributes: close-to-open consistency).
Taking over is done holding `.lock.takeover` (itself created exclusively): its holder deletes the
stale lock only if the file is still the one it judged, then creates its own like anyone else;
so two waiting runs cannot both win.
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


def _pid_namespace() -> str | None:
    """Containers may share a host name but not a pid space: pids are only compared within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
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
        for attempt in range(20):
            time.sleep(0.05 * min(attempt, 4))  # another run may be taking a stale lock over
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="run-dir-lock", daemon=True)
                self._thread.start()
                return self
            raw = self._read_raw()
            if raw is None:
                continue  # released meanwhile
            holder = _parse(raw)
            if holder is None and self._young():
                continue  # another run is writing its record this instant: look again
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
        """Create the lock with its record in one step: the record goes to a private file, which
        is then hard-linked to RUN_DIR/.lock, failing if that exists (atomic on local disks, NFS
        and Lustre). No reader ever sees the lock empty, even if its creator stops or dies between
        create and write. Where hard links are not supported, an exclusive create, then the write."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()), "pidns": _pid_namespace(),
                  "since": time.time(), "token": self.token}
        mine = self.path.with_name(f"{LOCK}.{self.token}")
        try:
            _write_json(mine, os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), record)
            os.link(mine, self.path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            try:
                _write_json(self.path, os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), record)
            except FileExistsError:
                return False
        finally:
            mine.unlink(missing_ok=True)
        return True

    def _read_raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _young(self, seconds: float = 5.0) -> bool:
        beat = self._heartbeat()
        return beat is not None and time.time() - beat / 1e9 < seconds

    def _heartbeat(self) -> int | None:
        try:
            with open(self.path, "rb") as f:  # open, then fstat: fresh attributes on NFS
                return os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None

    def _stale(self, holder: dict | None, raw: bytes) -> bool:
        if holder and holder.get("host") == socket.gethostname() and holder.get("pidns") == _pid_namespace():
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
        """Remove the stale lock `raw` judged, holding `.lock.takeover` (created exclusively) so no
        two runs take over at once: only its holder deletes, and only if the file is still `raw`."""
        mutex = self.path.with_name(LOCK + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._clear_dead_mutex(mutex)
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace()}, f)
            if self._read_raw() == raw:
                self.path.unlink(missing_ok=True)
        finally:
            mutex.unlink(missing_ok=True)

    def _clear_dead_mutex(self, mutex: Path) -> None:
        """A taker that died mid-takeover (seconds of work) leaves its mutex: removed once its pid
        is gone (same host) or it is older than the lease."""
        try:
            holder = _parse(mutex.read_bytes()) or {}
            age = time.time() - mutex.stat().st_mtime
        except FileNotFoundError:
            return
        same = holder.get("host") == socket.gethostname() and holder.get("pidns") == _pid_namespace()
        if (same and not _alive(int(holder.get("pid", -1)), None)) or age > self.lease_s:
            mutex.unlink(missing_ok=True)

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


def _write_json(path: Path, fd: int, record: dict) -> None:
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())


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
