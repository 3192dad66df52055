"""benchmarks/gpu_check.py end to end in its CPU dry run: every timing row, the augmentation share, the single-process
distributed check and the loss-falls run, written as JSON."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    out = tmp_path / "x.json"
    assert gpu_check.main(["--cpu-dry-run", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    decoding = report["decoding"]
    assert decoding["status"] == "ok" and decoding["max_abs_diff"] <= 1  # on a CPU device: same decoder as PIL
    assert all(r["loader_decode_img_s"] > 0 and r["device_decode_img_s"] > 0 for r in decoding["rows"])

    rows = report["rows"]
    assert {(r["method"], r["arch"]) for r in rows} == {
        (method, arch) for method in ("simclr", "byol", "moco_v2") for arch in ("resnet50", "resnet18")
    } | {("mae", "timm:vit_tiny_patch16_224"), ("dino_vit", "timm:vit_tiny_patch16_224")}
    vit = [r for r in rows if r["arch"].startswith("timm:")]
    assert len(vit) == 4 and all(r["status"] == "ok" for r in vit)  # float32 and bf16
    assert [r for r in rows if r["status"] == "error"] == []
    for r in rows:
        if r["precision"] == "16-mixed":
            assert r["status"] == "skipped: needs CUDA"
        elif r["status"] == "ok":
            assert r["framework_img_s"] > 0 and r["backbone_img_s"] > 0 and r["ratio"] > 0
    ran = {(r["precision"], r["channels_last"], r["compile"]) for r in rows if r["status"] == "ok"}
    assert {("32-true", False, False), ("32-true", True, False), ("bf16-mixed", True, False)} <= ran
    compiled = [r for r in rows if r["compile"]]
    assert len(compiled) == 1 and compiled[0]["status"] == "ok" and compiled[0]["compile_graphs"] > 0

    assert all(r["status"] == "ok" and r["share"] is not None for r in report["augmentation"])

    distributed = report["distributed"]
    assert distributed["ok"] and distributed["backend"] == "gloo"
    forced = [r for r in distributed["runs"] if r["collectives"] == "forced"]
    assert len(forced) == 2 and all(r["collective_calls"].get("all_reduce", 0) > 0 for r in forced)
    assert not torch.distributed.is_initialized()

    loss = report["loss_run"]
    assert loss["fell"] and loss["last_mean"] < loss["first_mean"] and len(loss["losses"]) == loss["steps"]
    assert report["totals"]["ok"] and report["totals"]["exit_code"] == 0


def test_gpu_check_needs_a_gpu_or_the_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "--cpu-dry-run" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
