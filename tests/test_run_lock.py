"""The root_dir lock: one live run per folder, a dead run's lock taken over, another host's lock respected."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from selfsup.train.lock import LOCK_NAME, RootDirInUse, RunLock


def write_lock(root: str, pid: int, host: str) -> None:
    with open(os.path.join(root, LOCK_NAME), "w") as f:
        f.write(f"{pid} {host} 2026-12-05T10:00:00\n")


def test_the_lock_is_held_for_the_run_and_released_after(tmp_path):
    with RunLock(str(tmp_path / "new")) as lock:
        assert open(lock.path).read().split()[0] == str(os.getpid())
        with pytest.raises(RootDirInUse, match=f"pid {os.getpid()}"):
            RunLock(str(tmp_path / "new")).acquire()
    assert not os.path.exists(lock.path)


def test_the_lock_of_a_live_process_is_refused_naming_it(tmp_path):
    write_lock(str(tmp_path), os.getppid(), socket.gethostname())  # our parent process: alive
    with pytest.raises(RootDirInUse, match=rf"pid {os.getppid()} on {socket.gethostname()}, started "
                                           rf"2026-12-05T10:00:00 \(lock file .*{LOCK_NAME}\)"):
        RunLock(str(tmp_path)).acquire()


def test_a_dead_processes_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    write_lock(str(tmp_path), process.pid, socket.gethostname())
    with pytest.warns(UserWarning, match=f"taking over the lock of run pid {process.pid}"):
        with RunLock(str(tmp_path)):
            pass
    write_lock(str(tmp_path), process.pid, "another-host")
    with pytest.raises(RootDirInUse, match=f"pid {process.pid} on another-host"):
        RunLock(str(tmp_path)).acquire()


def test_a_killed_process_not_yet_reaped_counts_as_dead(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    process.kill()
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie until wait()
    write_lock(str(tmp_path), process.pid, socket.gethostname())
    with pytest.warns(UserWarning, match="no longer running"):
        RunLock(str(tmp_path)).acquire()
    process.wait()
