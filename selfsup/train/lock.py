"""One run per root_dir: a lock file that names the run holding it, so that a second run started into the same folder
stops with a clear error before it writes config.yaml or a checkpoint over the first one's. A lock left by a run that
died (SIGKILL, OOM-killer, preemption) on this machine is taken over, which is what ``--resume auto`` after a crash
needs."""

from __future__ import annotations

import os
import socket
import time
import warnings
from types import TracebackType
from typing import Optional, Tuple, Type

LOCK_NAME = ".selfsup.lock"


class RootDirInUse(RuntimeError):
    """Another live run holds the root_dir's lock; the message names its pid, host and lock file."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a killed process its parent has not reaped yet is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_owner(path: str) -> Optional[Tuple[int, str, str]]:
    """(pid, host, start time) written in the lock file; None if it is unreadable or half-written."""
    try:
        with open(path) as f:
            pid, host, started = f.read().strip().split(" ", 2)
        return int(pid), host, started
    except (OSError, ValueError):
        return None


class RunLock:
    """``<root_dir>/.selfsup.lock`` held while a run writes into ``root_dir``: created with O_EXCL (atomic on local
    and NFSv3+ filesystems), holding ``<pid> <host> <start time>``; removed when the run ends. ``with RunLock(dir):``
    raises :class:`RootDirInUse` if a live run holds it; a lock of a dead process on this host is taken over with a
    warning, one of another host (whose processes cannot be checked) is reported as in use."""

    def __init__(self, root_dir: str) -> None:
        self.root_dir = root_dir
        self.path = os.path.join(root_dir, LOCK_NAME)
        self.held = False

    def acquire(self) -> None:
        os.makedirs(self.root_dir, exist_ok=True)
        host = socket.gethostname()
        for _ in range(3):  # a stale lock removed, or a half-written one finished, between our tries
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read_owner(self.path)
                if owner is None:
                    time.sleep(0.1)  # the other run is between creating and writing it
                    continue
                pid, owner_host, started = owner
                if owner_host == host and not _process_alive(pid):
                    warnings.warn(f"root_dir {self.root_dir}: taking over the lock of run pid {pid} (started "
                                  f"{started}), which is no longer running", stacklevel=2)
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise RootDirInUse(
                    f"--root_dir {self.root_dir} is in use by another run: pid {pid} on {owner_host}, started "
                    f"{started} (lock file {self.path}). Give this run another --root_dir, or wait for that one to "
                    "end; if it is gone, delete the lock file.") from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {host} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            self.held = True
            return
        raise RootDirInUse(f"--root_dir {self.root_dir}: could not take the lock file {self.path}; delete it if no "
                           "run uses this folder")

    def release(self) -> None:
        if not self.held:
            return
        owner = _read_owner(self.path)
        if owner is not None and owner[0] == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.release()
