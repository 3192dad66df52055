"""The package and its faces: the original top-level modules give the package's objects, the linear probe imports no
training code, and the console commands are installed."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

import selfsup
from selfsup.config import presets
from selfsup.eval import linear
from selfsup.train import module

FACES = {
    "moco": {"SelfSupervisedMethod": module.SelfSupervisedMethod},
    "model_params": {"ModelParams": selfsup.ModelParams, "BYOLParams": presets.BYOLParams,
                     "PRESETS": presets.PRESETS, "WMSEParams": presets.WMSEParams},
    "linear_classifier": {"LinearClassifierMethod": linear.LinearClassifierMethod},
    "lars": {"LARS": importlib.import_module("selfsup.optim.lars").LARS},
    "batchrenorm": {"BatchRenorm1d": importlib.import_module("selfsup.nn.batchrenorm").BatchRenorm1d},
    "ws_resnet": {"ws_resnet50": importlib.import_module("selfsup.nn.ws_resnet").ws_resnet50},
    "utils": {"MLP": importlib.import_module("selfsup.nn.heads").MLP},
    "train_blog": {"run_blog": importlib.import_module("selfsup.cli.blog").run_blog},
    "train": {"main": importlib.import_module("selfsup.cli.train").main},
}


@pytest.mark.parametrize("face", sorted(FACES))
def test_every_face_gives_the_package_objects(face):
    imported = importlib.import_module(face)
    for name, expected in FACES[face].items():
        assert getattr(imported, name) is expected, f"{face}.{name}"


def test_the_package_exports_the_modules_and_every_preset():
    assert selfsup.SelfSupervisedMethod is module.SelfSupervisedMethod
    assert selfsup.LinearClassifierMethod is linear.LinearClassifierMethod
    for function in presets.PRESETS.values():
        assert getattr(selfsup, function.__name__) is function and function.__name__ in selfsup.__all__


@pytest.mark.slow
def test_the_linear_probe_imports_no_training_code():
    code = ("import sys; from selfsup.eval.linear import LinearClassifierMethod; "
            "print(sorted(m for m in sys.modules if m.startswith(('selfsup.train', 'selfsup.cli'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_declaring_params_imports_no_training_library():
    code = ("import sys; import selfsup; from selfsup import BYOLParams; BYOLParams(); "
            "print(sorted(m for m in sys.modules if m.startswith(('pytorch_lightning', 'lightning'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["selfsup-train", "selfsup-linear", "selfsup-eval", "selfsup-embed",
                                     "selfsup-shards", "selfsup-blog"])
def test_console_commands_are_installed(command):
    path = shutil.which(command)
    assert path is not None, f"{command} is not on PATH: pip install -e . (requirements.txt) installs it"
    assert subprocess.run([path, "--help"], capture_output=True, text=True).returncode == 0
