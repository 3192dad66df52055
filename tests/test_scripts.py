"""Every command runs the same way as a module (``python -m selfsup.cli.<name>``) as from its console script, and
every benchmark script stays runnable: each answers ``--help`` here, and the slow suite runs each on tiny inputs."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(path for path in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__":' in path.read_text())
COMMANDS = {"selfsup-train": "train", "selfsup-linear": "linear", "selfsup-eval": "eval", "selfsup-embed": "embed",
            "selfsup-shards": "shards", "selfsup-blog": "blog"}


def console_scripts() -> dict:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    lines = [line.split("=", 1) for line in section.strip().splitlines() if "=" in line]
    return {name.strip(): target.strip().strip('"') for name, target in lines}


def help_text(run: object, argv0: str, argv: List[str], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> str:
    monkeypatch.setattr(sys, "argv", [argv0, *argv])
    with pytest.raises(SystemExit) as exit_:
        run()  # type: ignore[operator]
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_the_console_scripts_are_the_cli_modules():
    assert console_scripts() == {name: f"selfsup.cli.{module}:run" for name, module in COMMANDS.items()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_runs_as_a_module_as_from_its_console_script(command, monkeypatch, capsys):
    module = f"selfsup.cli.{COMMANDS[command]}"
    as_module = help_text(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), module, ["--help"],
                          monkeypatch, capsys)
    entry = __import__(module, fromlist=["run"]).run
    as_script = help_text(entry, command, ["--help"], monkeypatch, capsys)
    assert as_module == as_script and as_module.startswith(f"usage: {command}")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_benchmark_script_answers_help(script, monkeypatch, capsys):
    out = help_text(lambda: runpy.run_path(str(script), run_name="__main__"), str(script), ["--help"], monkeypatch,
                    capsys)
    assert out.startswith("usage:")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """train/<class>/*.png and val/<class>/*.png: 2 classes of random 32 px images."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 4)):
        for name in ("cat", "dog"):
            folder = tmp_path / "source" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "source"


@pytest.mark.slow
def test_bench_data_dry_run(image_folder, tmp_path, capsys):
    bench_data = runpy.run_path(str(ROOT / "benchmarks" / "bench_data.py"))
    bench_data["main"](["--data-path", str(image_folder), "--num-images", "8", "--workers", "0", "--batch-size", "4",
                        "--epochs", "1", "--backbone-steps", "1", "--device", "cpu", "--csv", str(tmp_path / "d.csv")])
    assert (tmp_path / "d.csv").read_text().count("\n") == 3 and "| what | workers |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_augment_dry_run(image_folder, tmp_path):
    """The throughput and pretraining parts (the augment part compares kornia, the bench extra)."""
    bench_augment = runpy.run_path(str(ROOT / "benchmarks" / "bench_augment.py"))
    results = bench_augment["main"](
        ["--parts", "throughput", "pretrain", "--data-path", str(image_folder), "--num-images", "8",
         "--batch-size", "2", "--workers", "0", "--batched-workers", "0", "--rounds", "1", "--steps", "1",
         "--pretrain-images", "8", "--val-images", "4", "--pretrain-epochs", "1", "--seeds", "0",
         "--out", str(tmp_path / "out")])
    assert {"throughput", "pretrain"} <= set(results) and (tmp_path / "out" / "bench_augment.md").exists()


@pytest.mark.slow
def test_smoke_presets_dry_run(capsys):
    smoke = runpy.run_path(str(ROOT / "benchmarks" / "smoke_presets.py"))
    smoke["main"](["--presets", "byol", "swav", "--steps", "1", "--batch-size", "4"])
    out = capsys.readouterr().out
    assert "| byol | synthetic |" in out and "| swav | synthetic |" in out
