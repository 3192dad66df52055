"""The evaluation suite: every protocol of a checkpoint's encoder in one run, and one report for several checkpoints.

Protocols (``PROTOCOLS``), on the labelled training split (the bank, the probes' training data) and the test split:

- ``knn``: weighted kNN (probes.knn_accuracy: cosine, exp(s / T) votes) for each k of ``knn_k`` (k=200, T=0.1 as
  InstDisc and lightly; k=20, DINO's number of neighbours);
- ``linear``: the linear probe of ``selfsup-linear`` (LinearClassifierMethod: frozen eval-mode encoder, SGD, lr 30,
  step schedule) on features computed once;
- ``finetune``: the whole encoder and a linear layer (FineTuneMethod: SGD for CNNs, AdamW with layer-wise lr decay
  for ViTs, the usual augmentation), top-1 / top-5;
- ``lowshot``: class-balanced subsets of ``label_fractions`` of the training labels, one per seed of
  ``lowshot_seeds``: a logistic regression (L-BFGS on standardized features, as SimCLR's linear transfer
  evaluation: no learning rate or schedule to retune for 100 or 1,000 images) on the frozen features, and with
  ``lowshot_finetune`` fine-tuning too; mean and standard deviation over the seeds.

The protocols that read frozen features share one extraction. Transfer is the same run on another labelled dataset:
``dataset_name`` / ``data_path`` override the checkpoint's (an image folder with train/ and val/ class folders, or a
held-out split of train/). Every setting is recorded in the report (``eval.json``, ``eval.md``).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import attr
import attrs
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import TensorDataset

from selfsup import data
from selfsup.eval import probes
from selfsup.eval.classifier import ENCODER_PREFIX, C, EncoderClassifier, read_checkpoint
from selfsup.eval.finetune import FineTuneMethod, FineTuneOptions
from selfsup.eval.linear import LR_MILESTONES, LinearClassifierMethod, ProbeOptions
from selfsup.options import check_fields, fail, option

PROTOCOLS = ("knn", "linear", "finetune", "lowshot")
REPORT_JSON, REPORT_MD = "eval.json", "eval.md"
RANDOM_ROW = "random init"
TrainerFactory = Callable[[int, str], pl.Trainer]  # (max_epochs, root folder) -> a Trainer


@attrs.frozen(kw_only=True, slots=False)
class SuiteOptions:
    """Evaluation suite"""

    protocols: Tuple[str, ...] = option(("knn", "linear", "lowshot"), f"any of {', '.join(PROTOCOLS)}")
    knn_k: Tuple[int, ...] = option((200, 20), "neighbours of each kNN variant (capped at the bank size)")
    knn_temperature: float = option(probes.KNN_TEMPERATURE, "kNN vote weight exp(cosine / T)", low=0, low_open=True)
    label_fractions: Tuple[float, ...] = option((0.01, 0.1), "low-shot: fractions of each class's training labels")
    lowshot_seeds: Tuple[int, ...] = option((0, 1, 2), "low-shot: one class-balanced subset per seed")
    lowshot_finetune: bool = option(False, "low-shot: also fine-tune on every subset (fine-tuning's settings)")
    random_baseline: bool = option(False, "add a row for the first checkpoint's encoder with random weights")
    seed: int = option(0, "seed of the classifiers' initialization and of the training order", low=0)

    def __attrs_post_init__(self) -> None:
        check_fields(self)
        unknown = [name for name in self.protocols if name not in PROTOCOLS]
        if unknown or not self.protocols:
            fail(self, "protocols", f"got {list(self.protocols)}; expected some of {', '.join(PROTOCOLS)}")
        if not self.knn_k or min(self.knn_k) < 1:
            fail(self, "knn_k", f"got {list(self.knn_k)}; expected one or more positive neighbour counts")
        if not self.label_fractions or not all(0 < f <= 1 for f in self.label_fractions):
            fail(self, "label_fractions", f"got {list(self.label_fractions)}; expected fractions in (0, 1]")
        if not self.lowshot_seeds:
            fail(self, "lowshot_seeds", "expected at least one seed")


def subset_size(fraction: float, count: int) -> int:
    """Images kept of a class of ``count`` images: fraction x count, rounded half up."""
    return math.floor(fraction * count + 0.5)


def check_label_fraction(labels: np.ndarray, classes: Sequence[str], fraction: float) -> None:
    """Raise ValueError if the ``fraction`` of the labels leaves a class of ``classes`` without an image."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    empty = [f"{classes[c]!r} ({counts[c]} images)" for c in range(len(classes))
             if subset_size(fraction, counts[c]) == 0]
    if empty:
        smallest = int(counts[counts > 0].min()) if (counts > 0).any() else 0
        hint = f"; a fraction of at least 1/{smallest} = {1 / smallest:.4g} keeps one of every class" * bool(smallest)
        raise ValueError(f"SuiteOptions.label_fractions: {fraction} of the training labels leaves class "
                         f"{', '.join(empty[:5])}{' and more' if len(empty) > 5 else ''} without an image{hint}")


def class_balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``subset_size(fraction, n_c)`` images of every class c (n_c its labelled images), drawn
    without replacement by ``seed``: the same seed gives the same subset. Unlabeled items (-1) are never drawn."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=subset_size(fraction, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def mean_and_spread(values: Sequence[float]) -> Dict[str, Any]:
    """{"values", "mean", "std"}: the standard deviation over the seeds with n - 1 (0 for one seed)."""
    array = np.asarray(values, dtype=np.float64)
    return {"values": [float(v) for v in array], "mean": float(array.mean()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


@attr.s(auto_attribs=True)
class Subject:
    """One row of the report: a checkpoint's encoder, or (``checkpoint`` None) the same architecture untrained."""

    name: str
    checkpoint: Optional[str]
    hparams: Dict[str, Any]
    state_dict: Optional[Dict[str, torch.Tensor]]

    def build(self, cls: Type[C], seed: int, **overrides: Any) -> C:
        """``cls`` on this subject's encoder: the checkpoint's weights, or the random initialization of ``seed``."""
        pl.seed_everything(seed, workers=True)
        method = cls(cls.checkpoint_params(self.hparams, **overrides))
        if self.state_dict is not None:
            method.load_encoder_weights(self.state_dict, self.name)
        return method

    def description(self) -> Dict[str, Any]:
        """The report's fields of the row: its name, checkpoint, pretraining method and params (None for the random
        encoder, which had none) and architecture."""
        trained = self.checkpoint is not None
        return {"name": self.name, "checkpoint": self.checkpoint,
                "method": self.hparams.get("loss_type") if trained else None,
                "encoder_arch": self.hparams["encoder_arch"],
                "params": self.hparams if trained else None}  # the pretraining run's ModelParams


def load_subjects(checkpoints: Sequence[str], random_baseline: bool) -> List[Subject]:
    """The report's rows, every checkpoint read (and checked to be one of ours) before any work."""
    subjects = []
    for path in checkpoints:
        checkpoint = read_checkpoint(path)
        encoder = {key: value for key, value in checkpoint["state_dict"].items() if key.startswith(ENCODER_PREFIX)}
        subjects.append(Subject(path, path, dict(checkpoint["hyper_parameters"]), encoder))
    if random_baseline and subjects:
        first = subjects[0]
        subjects.append(Subject(f"{RANDOM_ROW} ({first.hparams['encoder_arch']})", None, first.hparams, None))
    return subjects


class Evaluation:
    """The suite on several checkpoints: :meth:`run` checks everything it can before any work (each checkpoint is
    one of ours and fits its encoder, the data is labelled, every label fraction keeps every class, the image sizes
    fit a ViT's position embeddings), then evaluates one row at a time, rewriting the report after each.

    ``probe_overrides`` are LinearClassifierMethodParams fields (the linear probe's options, the data), and
    ``finetune_overrides`` FineTuneParams fields; ``make_trainer(max_epochs, root_dir)`` makes each Trainer.
    """

    def __init__(self, checkpoints: Sequence[str], suite: SuiteOptions, out_dir: str, make_trainer: TrainerFactory,
                 probe_overrides: Mapping[str, Any], finetune_overrides: Mapping[str, Any]) -> None:
        self.suite, self.out_dir, self.make_trainer = suite, out_dir, make_trainer
        self.probe_overrides = {**probe_overrides, "precompute_features": True}
        self.finetune_overrides = dict(finetune_overrides)
        self.subjects = load_subjects(checkpoints, suite.random_baseline)
        self.rows: List[Dict[str, Any]] = []

    @property
    def fine_tunes(self) -> bool:
        return "finetune" in self.suite.protocols or ("lowshot" in self.suite.protocols and self.suite.lowshot_finetune)

    def check(self) -> None:
        """The checks of the class docstring: every row's probe is built (its encoder loaded) and dropped again."""
        for subject in self.subjects:
            probe = subject.build(LinearClassifierMethod, self.suite.seed, **self.probe_overrides)
            if self.fine_tunes:
                FineTuneMethod.checkpoint_params(subject.hparams, **self.finetune_overrides)
            if "lowshot" in self.suite.protocols:
                train = probe.image_datasets()[0]
                labels = data.dataset_labels(train)
                for fraction in self.suite.label_fractions:
                    check_label_fraction(labels, dataset_classes(train), fraction)

    def run(self) -> Dict[str, Any]:
        """Evaluate every row; returns the report (also written to ``out_dir`` by the process of global rank 0)."""
        self.check()
        for subject in self.subjects:
            self.rows.append(self.evaluate(subject))
            if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # (set from the environment)
                self.write()
        return self.report()

    # --- one row ---------------------------------------------------------------------------------------------------
    def evaluate(self, subject: Subject) -> Dict[str, Any]:
        suite = self.suite
        probe = subject.build(LinearClassifierMethod, suite.seed, **self.probe_overrides)
        root = os.path.join(self.out_dir, f"row{len(self.rows)}")
        trainer = self.make_trainer(probe.params.max_epochs, os.path.join(root, "linear"))
        probe.to(trainer.strategy.root_device)
        start = time.perf_counter()
        train, test = probe.feature_datasets()
        seconds = {"features": time.perf_counter() - start}
        row: Dict[str, Any] = {**subject.description(), "data": data_description(probe, train, test)}
        if "knn" in suite.protocols:
            start = time.perf_counter()
            row["knn"] = [{"k": k, "neighbours": min(k, len(train)), "temperature": suite.knn_temperature,
                           "top1": probe.knn_accuracy(k, suite.knn_temperature)}
                          for k in suite.knn_k]
            seconds["knn"] = time.perf_counter() - start
        if "linear" in suite.protocols:
            start = time.perf_counter()
            pl.seed_everything(suite.seed, workers=True)
            trainer.fit(probe)
            row["linear"] = {**classifier_scores(trainer, probe), "epochs": trainer.max_epochs}
            seconds["linear"] = time.perf_counter() - start
        if "finetune" in suite.protocols:
            start = time.perf_counter()
            row["finetune"] = self.fine_tune(subject, os.path.join(root, "finetune"))
            seconds["finetune"] = time.perf_counter() - start
        if "lowshot" in suite.protocols:
            start = time.perf_counter()
            row["lowshot"] = self.low_shot(subject, train, test, root)
            seconds["lowshot"] = time.perf_counter() - start
        row["seconds"] = seconds
        return row

    def fine_tune(self, subject: Subject, root: str, indices: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Fine-tune the subject's encoder (on the training items ``indices`` only, when given); top-1 / top-5."""
        method: FineTuneMethod = subject.build(FineTuneMethod, self.suite.seed, **self.finetune_overrides)
        if indices is not None:
            method.restrict_training(indices.tolist())
        p = method.params
        trainer = self.make_trainer(p.finetune_epochs, root)
        trainer.fit(method)
        return {**classifier_scores(trainer, method), "epochs": trainer.max_epochs, "optimizer": method.optimizer_name,
                "base_lr": method.base_lr, "weight_decay": method.weight_decay,
                "layer_decay": p.finetune_layer_decay if method.depth else None}

    def low_shot(self, subject: Subject, train: TensorDataset, test: TensorDataset, root: str
                 ) -> List[Dict[str, Any]]:
        """Per label fraction: the logistic regression (and fine-tuning) on each seed's class-balanced subset."""
        x, y = (t.numpy() for t in train.tensors)
        test_xy = tuple(t.numpy() for t in test.tensors)
        results = []
        for fraction in self.suite.label_fractions:
            subsets = [class_balanced_subset(y, fraction, seed) for seed in self.suite.lowshot_seeds]
            logistic = [probes.logistic_regression_accuracies((x[i], y[i]), test_xy)[0] for i in subsets]  # type: ignore[arg-type]
            result: Dict[str, Any] = {"fraction": fraction, "images": len(subsets[0]),
                                      "seeds": list(self.suite.lowshot_seeds), "logistic": mean_and_spread(logistic)}
            if self.suite.lowshot_finetune:
                tuned = [self.fine_tune(subject, os.path.join(root, f"lowshot{fraction}_seed{seed}"), i)["top1"]
                         for seed, i in zip(self.suite.lowshot_seeds, subsets)]
                result["finetune"] = mean_and_spread(tuned)
            results.append(result)
        return results

    # --- the report ------------------------------------------------------------------------------------------------
    def report(self) -> Dict[str, Any]:
        """Every row so far and the settings, in JSON types."""
        linear = attr.asdict(ProbeOptions(**{name: value for name, value in self.probe_overrides.items()
                                             if name in attr.fields_dict(ProbeOptions)}))
        finetune = attr.asdict(FineTuneOptions(**{name: value for name, value in self.finetune_overrides.items()
                                                  if name in attr.fields_dict(FineTuneOptions)}))
        report = {"suite": attr.asdict(self.suite), "linear_settings": linear, "finetune_settings": finetune,
                  "lowshot_classifier": probes.LOGISTIC_REGRESSION,
                  "rows": self.rows}
        return json.loads(json.dumps(report, default=str))  # as eval.json holds it

    def write(self) -> Tuple[str, str]:
        """Write ``eval.json`` and ``eval.md`` to ``out_dir``; returns their paths."""
        os.makedirs(self.out_dir, exist_ok=True)
        report = self.report()
        json_path, md_path = os.path.join(self.out_dir, REPORT_JSON), os.path.join(self.out_dir, REPORT_MD)
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        with open(md_path, "w") as f:
            f.write(markdown(report))
        return json_path, md_path


def dataset_classes(dataset: Any) -> List[str]:
    """Class names of a labelled dataset (torchvision's, an image folder's, the synthetic one's)."""
    return list(getattr(dataset, "classes", None) or [])


def data_description(probe: LinearClassifierMethod, train: TensorDataset, test: TensorDataset) -> Dict[str, Any]:
    p = probe.params
    return {"dataset_name": p.dataset_name, "data_path": data.resolve_data_path(p),
            "crop": data.crop_size(p), "train_images": len(train), "test_images": len(test),
            "classes": int(probe.classifier.out_features)}


def classifier_scores(trainer: pl.Trainer, method: EncoderClassifier) -> Dict[str, float]:
    """Top-1 / top-5 on the test split after training (validated once more if the last epoch was not)."""
    if "valid_acc1" not in trainer.callback_metrics:
        trainer.validate(method, verbose=False)
    metrics = trainer.callback_metrics
    return {"top1": float(metrics["valid_acc1"]), "top5": float(metrics["valid_acc5"])}


def markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table (one row per checkpoint) and its settings."""
    suite = report["suite"]
    protocols = suite["protocols"]
    header = ["checkpoint", "method"]
    if "knn" in protocols:
        header += [f"kNN k={k}" for k in suite["knn_k"]]
    if "linear" in protocols:
        header += ["linear top-1"]
    if "finetune" in protocols:
        header += ["fine-tune top-1"]
    if "lowshot" in protocols:
        header += [f"{100 * f:g}% labels" for f in suite["label_fractions"]]
        if suite["lowshot_finetune"]:
            header += [f"{100 * f:g}% fine-tune" for f in suite["label_fractions"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = [os.path.basename(row["name"]) if row["checkpoint"] else row["name"],
                 f"{row['method'] or 'untrained'} ({row['encoder_arch']})"]
        cells += [f"{entry['top1']:.1f}" + ("" if entry["neighbours"] == entry["k"] else f" (k={entry['neighbours']})")
                  for entry in row.get("knn", [])]
        cells += [f"{row[name]['top1']:.1f}" for name in ("linear", "finetune") if name in row]
        lowshot = row.get("lowshot", [])
        cells += [f"{entry['logistic']['mean']:.1f} ± {entry['logistic']['std']:.1f}" for entry in lowshot]
        cells += [f"{entry['finetune']['mean']:.1f} ± {entry['finetune']['std']:.1f}" for entry in lowshot
                  if "finetune" in entry]
        lines.append("| " + " | ".join(cells) + " |")
    first = report["rows"][0]["data"] if report["rows"] else None
    linear, finetune = report["linear_settings"], report["finetune_settings"]
    notes = [
        f"Data: {first['dataset_name']} at {first['data_path']}, {first['train_images']} training and "
        f"{first['test_images']} test images, {first['classes']} classes, {first['crop']}-px crops."
        if first is not None else "Data: no row evaluated yet.",
        f"kNN: weighted (exp(cos / {suite['knn_temperature']})), training features as the bank.",
        f"Linear: frozen encoder, SGD lr {linear['lr']} momentum {linear['momentum']}, {linear['max_epochs']} epochs, "
        f"batch {linear['batch_size']}, x0.1 at {' and '.join(f'{100 * m:g}%' for m in LR_MILESTONES)} of the epochs.",
        f"Fine-tune: {finetune['finetune_epochs']} epochs, batch {finetune['finetune_batch_size']}, optimizer "
        f"{finetune['finetune_optimizer']} (auto: AdamW with layer decay {finetune['finetune_layer_decay']} for ViTs, "
        f"SGD otherwise), label smoothing {finetune['finetune_label_smoothing']}.",
        f"Low-shot: class-balanced subsets, seeds {suite['lowshot_seeds']}, mean ± std over seeds; "
        f"{report['lowshot_classifier']}.",
    ]
    lines += ["", "Top-1 accuracy (%) on the test split.", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
