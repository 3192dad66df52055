"""Every README snippet runs: Python blocks execute (GPU ones where GPUs exist), train.py commands parse into valid
params, and the offline quickstart trains for real."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import List

import attr
import pytest
import torch

from selfsup.cli import train
from selfsup.config import ModelParams

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(language: str) -> List[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def train_commands() -> List[List[str]]:
    commands = []
    for block in blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["python", "train.py"]:
                    commands.append(words[2:])
    return commands


def needs_gpu(code: str) -> bool:
    return 'accelerator="gpu"' in code


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    code = blocks("python")[index]
    compile(code, f"README python block {index}", "exec")
    if needs_gpu(code) and torch.cuda.device_count() < 8:
        pytest.skip("needs 8 GPUs (compiled only)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - the README is ours


@pytest.mark.parametrize("argv", train_commands(), ids=lambda argv: " ".join(argv[:2]))
def test_train_command_parses_into_valid_params(argv):
    args = train.build_parser().parse_args(argv)
    assert isinstance(train.params_from_args(args), ModelParams)


def test_quickstart_trains_offline_and_writes_its_checkpoint(tmp_path, monkeypatch):
    quickstart = next(argv for argv in train_commands() if "synthetic" in argv)
    monkeypatch.chdir(tmp_path)
    path = train.main(quickstart + ["--root_dir", str(tmp_path), "--accelerator", "cpu"])
    assert os.path.exists(path)


def test_every_option_is_documented():
    text = README.read_text()
    missing = [f.name for f in attr.fields(ModelParams) if f"| `{f.name}` |" not in text]
    assert not missing, f"README option table lacks {missing}"
