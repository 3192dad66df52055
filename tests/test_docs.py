"""The README and docs/ are checked: every ```python block runs (GPU ones are compiled where no GPUs are; ```py marks
excerpts that are not meant to run on their own), every command line of ours parses into valid params, the
quickstart trains offline, and the generated parts (docs/options.md, the README's preset table) match the code."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest
import torch

from selfsup.cli import eval as eval_cli
from selfsup.cli import reference, train
from selfsup.config import ModelParams

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Our programs, as the docs write them: the words that start an invocation (torchrun's "-m module" included).
TRAIN_PROGRAM = (("selfsup-train",), ("python", "train.py"), ("-m", "selfsup.cli.train"))
PROBE_PROGRAM = (("selfsup-linear",), ("python", "linear_classifier.py"))
BLOG_PROGRAM = (("selfsup-blog",), ("python", "train_blog.py"))
EVAL_PROGRAM = (("selfsup-eval",), ("-m", "selfsup.cli.eval"))


def blocks(language: str, documents: Sequence[Path] = DOCUMENTS) -> List[Tuple[str, str]]:
    """(document name, code) of every fenced block of ``language``."""
    return [(path.name, code) for path in documents
            for code in re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)]


def invocations(program: Sequence[Tuple[str, ...]]) -> List[List[Tuple[List[str], Optional[str]]]]:
    """Per bash block, every invocation of ``program``: (its arguments, the file its output is redirected to, if
    any). The arguments are the words after the program's leading words (so after any launcher such as torchrun)."""
    found = []
    for _, block in blocks("bash"):
        calls = []
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                target = words[words.index(">") + 1] if ">" in words else None
                words = words[: words.index(">")] if ">" in words else words
                for lead in program:
                    starts = [i for i in range(len(words)) if tuple(words[i:i + len(lead)]) == lead]
                    if starts and "..." not in words:
                        calls.append((words[starts[0] + len(lead):], target))
                        break
        if calls:
            found.append(calls)
    return found


def commands(program: Sequence[Tuple[str, ...]]) -> List[List[str]]:
    """The arguments of every invocation of ``program`` in the docs' bash blocks."""
    return [argv for block in invocations(program) for argv, _ in block]


def needs_gpu(code: str) -> bool:
    return 'accelerator="gpu"' in code


@pytest.mark.parametrize("index", range(len(blocks("python"))), ids=lambda i: blocks("python")[i][0])
def test_python_snippet_runs(index, tmp_path, monkeypatch):
    name, code = blocks("python")[index]
    compile(code, f"{name} python block {index}", "exec")
    if needs_gpu(code) and torch.cuda.device_count() < 8:
        pytest.skip("needs 8 GPUs (compiled only)")
    monkeypatch.chdir(tmp_path)
    exec(code, {})  # noqa: S102 - the docs are ours


@pytest.mark.parametrize("index", range(len(invocations(TRAIN_PROGRAM))))
def test_train_commands_parse_into_valid_params(index, tmp_path, monkeypatch, capsys):
    """The commands of one bash block, in order: --print_config's output goes where the block redirects it, so a
    later --config can read it."""
    monkeypatch.chdir(tmp_path)
    parser = train.build_parser()
    for argv, target in invocations(TRAIN_PROGRAM)[index]:
        if "--print_config" in argv:
            with pytest.raises(SystemExit) as exit_:
                train.parse(parser, argv)
            assert exit_.value.code == 0
            if target is not None:
                Path(target).write_text(capsys.readouterr().out)
            continue
        assert isinstance(train.params_from_config(train.parse(parser, argv)), ModelParams)


@pytest.mark.slow
def test_quickstart_learns_offline_and_says_what_it_learned(tmp_path, monkeypatch, capsys):
    """The README's main job, as written: it ends with a block comparing the probes with the untrained encoder's
    (measured in the run) and naming the pictures. The issue's bar is kNN >= 50% (chance 10%); runs measured 56-61%."""
    quickstart = next(argv for argv in commands(TRAIN_PROGRAM) if "synthetic" in argv)
    monkeypatch.chdir(tmp_path)
    path = train.main(quickstart + ["--trainer.accelerator", "cpu"])
    assert os.path.exists(path) and path == "runs/quickstart.ckpt"
    block = capsys.readouterr().out.split("what was learned")[1]
    rows = {line.split("  ")[1].strip(): re.findall(r"([\d.]+)%", line) for line in block.splitlines()[2:4]}
    (knn_before, knn_after), (probe_before, probe_after) = rows["kNN (k=200)"], rows["linear probe"]
    assert float(knn_after) >= 50 and float(knn_after) >= float(knn_before) + 20, block
    assert float(probe_after) >= 50 and float(probe_after) >= float(probe_before) + 15, block
    pictures = block.split("pictures: ")[1].splitlines()[0].split(", ")
    assert sorted(map(os.path.basename, pictures)) == ["final_neighbours.png", "final_tsne.png", "probe_accuracy.png"]
    assert all(os.path.getsize(p) > 0 for p in pictures)
    # the evaluation suite's documented command on that checkpoint writes the report
    evaluation = next(argv for argv in commands(EVAL_PROGRAM) if "runs/quickstart.ckpt" in argv)
    report = eval_cli.main(evaluation)
    out_dir = evaluation[evaluation.index("--out_dir") + 1]
    assert json.loads(Path(out_dir, "eval.json").read_text()) == report
    assert [row["checkpoint"] for row in report["rows"]] == ["runs/quickstart.ckpt", None]
    assert report["rows"][0]["knn"][0]["top1"] > report["rows"][1]["knn"][0]["top1"]  # learned beats random
    assert Path(out_dir, "eval.md").read_text().count("\n| ") == 2


def test_generated_docs_match_the_code():
    """Regenerate with: python -m selfsup.cli.reference"""
    assert (ROOT / "docs" / "options.md").read_text() == reference.options_markdown()
    assert (ROOT / reference.PRESETS_STUB).read_text() == reference.presets_stub()
    assert (ROOT / reference.PARAMS_STUB).read_text() == reference.params_stub()
    readme = (ROOT / "README.md").read_text()
    assert reference.with_preset_table(readme) == readme
    assert len(readme.splitlines()) <= 150


def test_every_linked_page_exists():
    for path in DOCUMENTS:
        for target in re.findall(r"\]\(((?:docs/)?[\w/]+\.md)\)", path.read_text()):
            assert (path.parent / target).exists() or (ROOT / target).exists(), f"{path.name} links to {target}"
