"""Per-slide claims, so that independent ``preprocess`` jobs (an array job, a resubmitted job) share one ``--out``.

A job claims a slide by creating ``<out>/locks/<slide_id>.lock`` with ``O_CREAT | O_EXCL`` (atomic
on local disks and on NFS v3+), holding its job, host, pid and start time as JSON. While it works
on the slide a heartbeat thread touches the lock every ``HEARTBEAT_S`` seconds. When the slide is
finished (done, failed or without tissue) the lock is renamed to ``<slide_id>.done``, which records
the job that did it; a failed slide's record is removed so a later job retries it.

A lock is **stale**, and taken over by the next job that meets it, when

* its holder ran on this host and its pid is no longer alive (a killed job), or
* its heartbeat is older than ``stale_after_s`` (default ``STALE_AFTER_S`` = 10 minutes: the holder,
  on any host, missed ten heartbeats).

Taking over goes through a second exclusive file (``<slide_id>.lock.break``) so that two jobs that
find the same stale lock do not both remove it (the second would otherwise remove the first's new
lock); a ``.break`` file older than ``stale_after_s`` is itself removed.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
LOCK_DIR = "locks"


def job_label() -> str:
    """This process's job: ``$PATHALIGN_JOB``, else the SLURM job (and array task), with ``@host:pid``."""
    host, pid = socket.gethostname(), os.getpid()
    name = os.environ.get("PATHALIGN_JOB")
    if not name and os.environ.get("SLURM_JOB_ID"):
        name = "slurm-" + os.environ["SLURM_JOB_ID"]
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            name += "_" + os.environ["SLURM_ARRAY_TASK_ID"]
    return f"{name}@{host}:{pid}" if name else f"{host}:{pid}"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@dataclass
class Holder:
    """Who holds (or held) a slide: ``job``, ``host``, ``pid``, ``since`` (epoch s)."""

    job: str
    host: str
    pid: int
    since: float

    @classmethod
    def of(cls, record: dict | None) -> Holder | None:
        if not isinstance(record, dict):
            return None
        try:
            return cls(str(record["job"]), str(record["host"]), int(record["pid"]), float(record["since"]))
        except (KeyError, TypeError, ValueError):
            return None


class SlideLocks:
    """Claims of the slides of one output folder by this job.

    Args:
        out: the output folder (``locks/`` is created inside).
        job: this job's label (default :func:`job_label`).
        stale_after_s: age of the last heartbeat after which a lock is taken over.
        heartbeat_s: how often a held lock is touched.
    """

    def __init__(self, out: str | Path, job: str | None = None, stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.dir = Path(out) / LOCK_DIR
        self.job = job or job_label()
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.stale_after_s, self.heartbeat_s = float(stale_after_s), float(heartbeat_s)
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def lock_path(self, slide_id: str) -> Path:
        return self.dir / f"{slide_id}.lock"

    def done_path(self, slide_id: str) -> Path:
        return self.dir / f"{slide_id}.done"

    # ------------------------------------------------------------------ claiming
    def is_stale(self, path: Path, holder: Holder | None) -> bool:
        """Whether the lock at ``path`` (held by ``holder``; None: unreadable) may be taken over."""
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder is not None and holder.host == self.host and not _pid_alive(holder.pid):
            return True
        return age > self.stale_after_s

    def claim(self, slide_id: str) -> Holder | None:
        """Claim ``slide_id``; returns None when this job holds it now, else the live holder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(slide_id)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = _read(path)
                holder = Holder.of(record)
                if holder is not None and holder.job == self.job:
                    return None  # ours already
                if not self.is_stale(path, holder):
                    return holder or Holder("unknown (lock being written)", "?", -1, time.time())
                self._break(path, record)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"job": self.job, "host": self.host, "pid": self.pid, "since": time.time()}, f)
            except BaseException:  # a full disk: leave no empty lock behind
                path.unlink(missing_ok=True)
                raise
            self._held.add(slide_id)
            self._start_heartbeat()
            return None
        holder = Holder.of(_read(path))
        return holder or Holder("unknown", "?", -1, time.time())

    def _break(self, path: Path, record: dict | None) -> None:
        """Remove the stale lock ``path`` if it still holds ``record``, one breaker at a time."""
        breaker = path.with_name(path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - breaker.stat().st_mtime > self.stale_after_s:
                    breaker.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            if _read(path) == record:
                path.unlink(missing_ok=True)
        finally:
            breaker.unlink(missing_ok=True)

    def release(self, slide_id: str, done: bool) -> None:
        """Give up ``slide_id``: ``done`` renames the lock to the ``.done`` record, otherwise it is removed."""
        if slide_id not in self._held:
            return
        self._held.discard(slide_id)
        path = self.lock_path(slide_id)
        try:
            if done:
                os.replace(path, self.done_path(slide_id))
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def done_by(self, slide_id: str) -> str:
        """The job recorded as having done ``slide_id`` ('' when none is recorded).

        The record is read, then the lock (a job that finished the output but has not yet renamed
        its lock), then the record again (renamed in between).
        """
        for path in (self.done_path(slide_id), self.lock_path(slide_id), self.done_path(slide_id)):
            holder = Holder.of(_read(path))
            if holder is not None:
                return holder.job
        return ""

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        if self._beat is None or not self._beat.is_alive():
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name="slide-lock-heartbeat", daemon=True)
            self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            for sid in list(self._held):
                try:
                    os.utime(self.lock_path(sid))
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the heartbeat and remove any lock still held (not done)."""
        self._stop.set()
        for sid in list(self._held):
            self.release(sid, done=False)
