"""A real crash: ``selfsup-train`` in a subprocess, killed with SIGKILL mid-epoch and again while it writes a
checkpoint, then restarted with ``--resume auto``, ends bit for bit where an uninterrupted run ends. And a second run
started into the root_dir of a live one is refused before it writes anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import pytest
import torch

from selfsup.cli import train
from selfsup.train import checkpoints
from selfsup.train.lock import LOCK_NAME, RootDirInUse, RunLock

pytestmark = pytest.mark.slow

# 8 steps per epoch, 3 epochs; last.ckpt every 4 steps. ResNet-18 with its EMA copy and SGD momentum makes a
# checkpoint of about 135 MB, so its write (with fsync) lasts long enough to be killed in the middle.
ARGS = ["--preset", "moco_v2", "--dataset_name", "synthetic", "--synthetic_train_size", "256",
        "--synthetic_val_size", "64", "--batch_size", "32", "--K", "256", "--use_cifar_stem", "false",
        "--num_data_workers", "0", "--max_epochs", "3", "--save_last_every_n_steps", "4", "--save_every_n_epochs", "0",
        "--embedding_plot", "none", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
STEPS = 24
TIMEOUT = 300.0


def start(root: str, *extra: str) -> "subprocess.Popen[str]":
    command = [sys.executable, "-m", "selfsup.cli.train", *ARGS, "--root_dir", root,
               "--checkpoint", os.path.join(root, "final.ckpt"), *extra]
    log = open(os.path.join(root + ".log"), "a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Callable[[], bool], process: "subprocess.Popen[str]", what: str, poll: float = 0.002) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def kill(process: "subprocess.Popen[str]") -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def temporary_files(directory: str) -> List[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")] if os.path.isdir(directory) else []


def final_state(path: str) -> Dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {"global_step": state["global_step"], "state_dict": state["state_dict"],
            "optimizer_states": state["optimizer_states"], "lr_schedulers": state["lr_schedulers"]}


def assert_identical(actual: Any, expected: Any, where: str = "checkpoint") -> None:
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_identical(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_identical(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def test_sigkill_mid_epoch_and_mid_write_then_resume_auto_ends_like_the_uninterrupted_run(tmp_path):
    reference = str(tmp_path / "reference")
    crashed = str(tmp_path / "crashed")
    os.makedirs(reference)
    os.makedirs(crashed)
    straight = start(reference)

    # 1. SIGKILL mid-epoch: after the third save (step 12, epoch 2 of 3 begun at step 8), a moment into the next steps
    last = os.path.join(crashed, "checkpoints", "last.ckpt")
    first = start(crashed)
    saves: List[float] = []

    def third_save_done() -> bool:
        if os.path.exists(last) and (not saves or os.path.getmtime(last) != saves[-1]):
            saves.append(os.path.getmtime(last))
        return len(saves) >= 3
    wait_for(third_save_done, first, "three saves of last.ckpt")
    time.sleep(0.3)
    kill(first)
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 8 < killed_at < 16 and os.path.exists(os.path.join(crashed, LOCK_NAME))  # mid-epoch; the lock is left

    # 2. resumed, then SIGKILL while it writes its next checkpoint: the temporary file is there, last.ckpt unchanged
    second = start(crashed, "--resume", "auto")
    wait_for(lambda: bool(temporary_files(os.path.dirname(last))), second, "a checkpoint write", poll=0.0005)
    kill(second)
    partial = temporary_files(os.path.dirname(last))
    assert partial, "the write finished before the kill landed"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == killed_at

    # 3. resumed again, to the end: from last.ckpt, never from the partial file
    third = start(crashed, "--resume", "auto")
    assert third.wait(TIMEOUT) == 0
    assert straight.wait(TIMEOUT) == 0
    log = open(crashed + ".log").read()
    resumed_from = [line.split("resume: ", 1)[1] for line in log.splitlines() if line.startswith("resume: ")]
    assert resumed_from == [last, last], log[-3000:]
    assert "taking over the lock of run pid" in log
    assert checkpoints.find_resume_checkpoint(os.path.dirname(last)) == last

    expected = final_state(os.path.join(reference, "final.ckpt"))
    actual = final_state(os.path.join(crashed, "final.ckpt"))
    assert expected["global_step"] == STEPS
    assert_identical(actual, expected)
    assert not os.path.exists(os.path.join(crashed, LOCK_NAME))  # released at the end


def test_a_second_run_into_a_live_runs_root_dir_is_refused_before_it_writes(tmp_path):
    root = str(tmp_path / "run")
    os.makedirs(root)
    first = start(root, "--max_epochs", "1000")
    config = os.path.join(root, "config.yaml")
    try:
        wait_for(lambda: os.path.exists(os.path.join(root, "checkpoints", "last.ckpt")), first, "the first save")
        written = {name: os.path.getmtime(os.path.join(root, name)) for name in ("config.yaml", LOCK_NAME)}
        saved = open(config).read()
        with pytest.raises(RootDirInUse, match=rf"in use by another run: pid {first.pid} on .*{LOCK_NAME}"):
            train.main([*ARGS, "--root_dir", root, "--max_epochs", "1"])
        assert open(config).read() == saved
        assert {name: os.path.getmtime(os.path.join(root, name)) for name in written} == written
        assert first.poll() is None  # the first run goes on
    finally:
        kill(first)
    with pytest.warns(UserWarning, match=f"taking over the lock of run pid {first.pid}"):
        with RunLock(root):
            assert open(os.path.join(root, LOCK_NAME)).read().split()[0] == str(os.getpid())
    assert not os.path.exists(os.path.join(root, LOCK_NAME))
