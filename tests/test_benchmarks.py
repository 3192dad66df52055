"""The benchmark scripts run end to end on tiny inputs and write their CSVs (their figures are not checked here)."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
from helpers import tiny
from PIL import Image

from benchmarks import bench_decode, bench_quality, bench_throughput
from selfsup.config import MoCoV2Params
from selfsup.train.module import SelfSupervisedMethod


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bench_throughput_tiny(tmp_path):
    pytest.importorskip("lightly")
    out = tmp_path / "throughput.csv"
    rows = bench_throughput.main(
        ["--presets", "simclr", "byol", "--batch-size", "8", "--warmup", "1", "--steps", "1", "--rounds", "1",
         "--accelerator", "cpu", "--peer", "--csv", str(out)]
    )
    assert [r["preset"] for r in rows] == ["simclr", "byol"]
    assert [r["target_views"] for r in rows] == [0, 2]  # BYOL's momentum encoder sees both views
    written = read_csv(str(out))
    for row in written:
        for field in ("framework_step_ms", "required_step_ms", "backbone_step_ms", "ratio", "framework_peak_mb",
                      "peer_step_ms", "peer_ratio"):
            assert math.isfinite(float(row[field])) and float(row[field]) > 0, (row["preset"], field)


@pytest.fixture
def image_folder(tmp_path):
    """train/<class>/*.png: 2 classes of 6 random 32 px images."""
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        folder = tmp_path / "source" / "train" / name
        folder.mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "source"


def test_bench_quality_tiny_image_folder(tmp_path, image_folder):
    work = tmp_path / "work"
    rows = bench_quality.main(
        ["--data-path", str(image_folder), "--presets", "byol", "--train-per-class", "4", "--holdout-per-class",
         "2", "--epochs", "2", "--batch-size", "4", "--workers", "0", "--accelerator", "cpu",
         "--set", "mlp_hidden_dim=32", "dim=16", "--work-dir", str(work)]
    )
    assert [r["preset"] for r in rows] == ["random_init", "byol"]
    assert len(rows[1]["ours"]["knn"]) == 2 and len(rows[1]["ours"]["losses"]) == 2  # kNN after every epoch
    subset = work / "data_seed0_4_2"
    assert len(os.listdir(subset / "train" / "cat")) == 4 and len(os.listdir(subset / "val" / "dog")) == 2
    written = read_csv(str(work / "bench_quality.csv"))
    assert [(r["preset"], r["epoch"]) for r in written] == [("random_init", "0"), ("byol", "1"), ("byol", "2")]
    assert written[-1]["linear_acc"] != "" and (work / "bench_quality.png").stat().st_size > 0

    # --merge: runs on the same split combine into one CSV, table and plot; the CSV survives the round trip
    merged = tmp_path / "merged"
    rows = bench_quality.main(["--merge", str(work / "bench_quality.csv"), str(work / "bench_quality.csv"),
                               "--work-dir", str(merged)])
    assert [r["preset"] for r in rows] == ["random_init", "byol"]
    assert (merged / "bench_quality.csv").read_text() == (work / "bench_quality.csv").read_text()
    assert "| byol |" in (merged / "bench_quality.md").read_text() and (merged / "bench_quality.png").exists()
    # a later run of ours alone replaces our half of an earlier pair and keeps the peer's half
    first = (work / "bench_quality.csv").read_text()
    byol_lines = [line for line in first.splitlines() if line.startswith("byol,ours,")]
    pair = tmp_path / "pair.csv"
    pair.write_text(first + "".join(line.replace(",ours,", ",lightly,") + "\n" for line in byol_lines))
    ours_again = tmp_path / "ours_again.csv"
    fields = byol_lines[0].split(",")
    ours_again.write_text(first.replace(byol_lines[0], ",".join(fields[:3] + ["99.0"] + fields[4:])))
    rows = bench_quality.main(["--merge", str(pair), str(ours_again), "--work-dir", str(merged)])
    assert rows[1]["ours"]["knn"][0] == 99.0
    assert rows[1]["peer"]["knn"] == [float(line.split(",")[3]) for line in byol_lines]
    other_split = tmp_path / "other.csv"
    other_split.write_text(first.replace("random_init,ours,0,", "random_init,ours,0,1"))
    with pytest.raises(ValueError, match="random_init kNN/linear .* not the same split and seed"):
        bench_quality.main(["--merge", str(work / "bench_quality.csv"), str(other_split), "--work-dir", str(merged)])


@pytest.mark.slow
def test_bench_quality_peer_column_and_long_budget(tmp_path, image_folder):
    pytest.importorskip("lightly")
    work = tmp_path / "work"
    rows = bench_quality.main(
        ["--data-path", str(image_folder), "--presets", "simsiam", "--peer", "--budget", "long", "--epochs", "2",
         "--train-per-class", "4", "--holdout-per-class", "2", "--batch-size", "4", "--workers", "0",
         "--accelerator", "cpu", "--set", "mlp_hidden_dim=32", "dim=16", "--work-dir", str(work)]
    )
    ours, peer = rows[1]["ours"], rows[1]["peer"]
    assert len(ours["knn"]) == len(peer["knn"]) == 2 and ours["epoch_seconds"] > 0 and peer["epoch_seconds"] > 0
    assert "lr 0.05 -> 0.005" in rows[1]["recipe"]  # the short-run recipe is reported
    written = read_csv(str(work / "bench_quality.csv"))
    assert [(r["implementation"], r["epoch"]) for r in written[1:]] == [
        ("ours", "1"), ("ours", "2"), ("lightly", "1"), ("lightly", "2")]
    table = (work / "bench_quality.md").read_text()
    assert table.startswith("| preset | kNN %") and "| simsiam |" in table and "| random init |" in table

    # --peer-only reruns the peer's half alone, to the digit: a pair whose peer run was lost can be completed
    alone = bench_quality.main(
        ["--data-path", str(image_folder), "--presets", "simsiam", "--peer-only", "--epochs", "2",
         "--train-per-class", "4", "--holdout-per-class", "2", "--batch-size", "4", "--workers", "0",
         "--accelerator", "cpu", "--set", "mlp_hidden_dim=32", "dim=16", "--work-dir", str(tmp_path / "alone")]
    )
    assert alone[1]["ours"] is None and alone[1]["peer"]["knn"] == peer["knn"]
    assert alone[1]["peer"]["linear"] == peer["linear"]
    assert "| simsiam | | | | | | " in (tmp_path / "alone" / "bench_quality.md").read_text()  # ours' cells empty
    assert {r["implementation"] for r in read_csv(str(tmp_path / "alone" / "bench_quality.csv"))[1:]} == {"lightly"}


def test_bench_quality_long_budget_is_one_preset_at_a_time(tmp_path):
    with pytest.raises(SystemExit):
        bench_quality.parse_args(["--budget", "long", "--presets", "byol", "simclr"])
    assert bench_quality.parse_args(["--budget", "long", "--presets", "byol"]).epochs == bench_quality.BUDGETS["long"]
    assert bench_quality.crossing_epoch([30.0, 34.0, 33.0, 35.0], 33.0) == 2
    assert bench_quality.crossing_epoch([30.0, 34.0, 32.0], 33.0) is None


def test_bench_quality_rejects_too_small_classes(tmp_path, image_folder):
    with pytest.raises(ValueError, match="'cat' has 6 images; 8 are needed"):
        bench_quality.main(
            ["--data-path", str(image_folder), "--presets", "byol", "--train-per-class", "4",
             "--holdout-per-class", "4", "--work-dir", str(tmp_path / "work")]
        )


def test_bench_throughput_times_a_full_queue():
    model = SelfSupervisedMethod(tiny(MoCoV2Params))
    assert model.step.memory.read().shape[1] == 0  # a new queue is empty...
    bench_throughput.FullQueue().on_train_start(None, model)
    assert model.step.memory.read().shape[1] == model.params.K  # ...and the benchmark times the steady state


def test_bench_decode_tiny(tmp_path):
    rows = bench_decode.main(["--num-images", "8", "--image-size", "40", "60", "--side", "32", "--batch-size", "4",
                              "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "decode.json")])
    assert [r["workers"] for r in rows] == [0]
    assert rows[0]["loader_decode_img_s"] > 0 and rows[0]["device_decode_img_s"] > 0
