"""One command that checks and measures the library on a GPU; ``--cpu-dry-run`` runs every code path tiny on the CPU.

Timing rows, for SimCLR, BYOL and MoCo v2 at ResNet-50 224 px (ImageNet stem) and ResNet-18 32 px (CIFAR stem), in
the precisions "32-true", "bf16-mixed" and "16-mixed" with channels_last off and on; for MAE and DINO on a ViT-S/16 at
224 px in "32-true" and "bf16-mixed" (MAE's backbone column is the encoder on all tokens, so its ratio below 1 is what
masking saves); then torch.compile on for a subset only (bf16-mixed with channels_last, one row per method and
network, run last so that the time guard drops them first: a cold compile of a ResNet takes about a minute):

- framework: a real ``pl.Trainer`` fit of ``SelfSupervisedMethod`` on ready-made views (as bench_throughput.py), the
  median wall time from one ``on_train_batch_start`` to the next after the warmup steps. The views lie on the training
  device, so that the step holds no host-to-device copy of float views, which a real run does not make either (it
  copies uint8 images and makes the views on the device: the augmentation share below);
- backbone: forward + backward of the same encoder module alone on the same views, plus the no-grad forward of the
  momentum encoder where the method has one (bench_throughput's "encoder-only" column), under the same autocast and
  memory format: no heads, loss, optimizer or framework. ratio = framework step time / backbone step time;
- img/s counts source images (2 views each); peak MB is ``torch.cuda.max_memory_allocated`` of each measurement
  (the in-memory views included), on the CPU the process's peak RSS so far.

Checks: the batched augmentation's share of a step on the device; SyncBatchNorm, the gathers and shuffle-BN in a
single-process group (nccl on CUDA, gloo on CPU), as the library runs them and with the collectives forced; a
200-step SimCLR run on the synthetic data (real loader, batched augmentation) whose loss must fall.

Everything printed is also written as JSON (``--out``). The exit status is 1 on any error, after the JSON is written:
an exception in any row, a non-finite loss, a failed distributed check, a loss that did not fall; 2 when there is no
GPU and no --cpu-dry-run.

    python benchmarks/gpu_check.py                  # one GPU, under 6 minutes on an H200
    python benchmarks/gpu_check.py --cpu-dry-run    # every code path on tiny sizes on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import resource
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch._dynamo.utils import counters as dynamo_counters
from torch.utils.data import Dataset

from selfsup import BYOLParams, MoCoV2Params, SelfSupervisedMethod, SimCLRParams, data
from selfsup.config import DINOViTSmallParams, MAEParams, ModelParams
from selfsup.distributed import collectives, sync_batchnorm
from selfsup.nn.target import MomentumTarget, encode_views
from selfsup.train.pipeline import batch_views

try:
    from benchmarks.bench_decode import generated_folder, images_per_second
    from benchmarks.bench_throughput import FullQueue, view_shapes
except ImportError:  # run as a script: Python puts benchmarks/ itself, not the repository, on sys.path
    from bench_decode import generated_folder, images_per_second  # type: ignore[no-redef, import-not-found]
    from bench_throughput import FullQueue, view_shapes  # type: ignore[no-redef, import-not-found]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results", "gpu_check.json")
METHODS: Dict[str, Callable[..., ModelParams]] = {"simclr": SimCLRParams, "byol": BYOLParams, "moco_v2": MoCoV2Params}
# The ViT rows: MAE (encoder on a quarter of the tokens) and DINO (2 global + 8 local crops) on the ViT of
# plan.vit_arch, in float32 and bf16.
VIT_METHODS: Dict[str, Callable[..., ModelParams]] = {"mae": MAEParams, "dino_vit": DINOViTSmallParams}
VIT_PRECISIONS = ("32-true", "bf16-mixed")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
COMPILED_PRECISION = "bf16-mixed"  # compile rows: this precision with channels_last, the setting a GPU run would use
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Until a compile row has finished, the time guard assumes a cold Inductor compile of a ResNet's training graph and
# its momentum encoder's inference graph takes this long.
FIRST_COMPILE_GUESS_S = 60.0
# Forced collectives in a world of one compute what no collectives do, in another summation order (SyncBatchNorm's
# statistics): the first losses agree to ~1e-6 and a few SGD steps at batch 4 amplify that to ~1e-4, while wrong
# statistics or a wrong gather change the loss by far more than this.
LOSS_AGREEMENT_RTOL = 1e-2
COUNTED_COLLECTIVES = ("all_gather", "all_gather_single", "all_gather_into_tensor", "all_reduce", "broadcast")
GATHERS = ("all_gather", "all_gather_single", "all_gather_into_tensor")
# The distributed check: MoCo v2 with every distributed flag, SimCLR with SyncBatchNorm and its gathered negatives.
DISTRIBUTED_RUNS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("moco_v2", {"sync_batch_norm": "all", "gather_keys_for_queue": True, "shuffle_batch_norm": True}),
    ("simclr", {"sync_batch_norm": "all", "gather_negatives_across_devices": True}),
)
OK, ERROR = "ok", "error"


@dataclass(frozen=True)
class Arch:
    """An encoder configuration and its batch."""

    name: str
    encoder_arch: str
    image_size: int
    cifar_stem: bool
    embedding_dim: int
    batch_size: int
    patch_size: Optional[int] = None  # ViTs: their patch side (None: the model's)
    # The dataset whose stored image side and normalization the augmentation timing takes (ImageNet's 256 px images
    # for 224 px crops, as a real run); None: the rows' own synthetic images.
    augmentation_dataset: Optional[str] = None


@dataclass(frozen=True)
class Row:
    """One timing row."""

    method: str
    arch: Arch
    precision: str
    channels_last: bool
    compiled: bool


@dataclass(frozen=True)
class Plan:
    """What one invocation runs: the GPU run or the CPU dry run."""

    dry_run: bool
    device: torch.device
    archs: Tuple[Arch, ...]
    warmup: int
    steps: int
    max_seconds: float
    compile_backend: str
    compile_rows: int  # compile rows (one per method and network), at most len(METHODS) * len(archs)
    loss_arch: Arch  # the loss-falls run: SimCLR on the synthetic data with this encoder and batch
    loss_steps: int
    loss_window: int  # steps averaged at the start and at the end of the loss-falls run
    loss_subset: bool  # the same batch of images every step: a short run's loss falls reliably on it
    loss_precision: str
    loss_workers: int
    dist_arch: Arch
    dist_steps: int
    vit_arch: Arch  # the ViT rows' encoder

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device.type == "cuda" else "cpu"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--cpu-dry-run", action="store_true", help="every code path on tiny sizes on the CPU")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the JSON file of everything printed")
    parser.add_argument("--max-minutes", type=float, default=5.0,
                        help="timing rows that would end later than this are skipped; the checks always run")
    parser.add_argument("--warmup", type=_non_negative, help="untimed steps per measurement [GPU 3, dry run 1]")
    parser.add_argument("--steps", type=_positive, help="timed steps per measurement [GPU 5, dry run 1]")
    parser.add_argument("--batch-224", type=_positive, default=128, help="source images per step, ResNet-50 224 px")
    parser.add_argument("--batch-32", type=_positive, default=256, help="source images per step, ResNet-18 32 px")
    parser.add_argument("--compile-backend",
                        help="torch.compile backend [GPU inductor; dry run aot_eager, which captures the same graphs "
                             "without Inductor's C++ code generation, a minute per network on 2 cores]")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.cpu_dry_run:
        # ResNet-50 with the ImageNet stem at 32 px stands for the 224 px rows, ResNet-18 with the CIFAR stem at 8 px
        # for the 32 px rows: the same networks and code paths at a small fraction of the compute (not 16 px, where
        # ResNet-50's bf16 backward on a CPU can give non-finite gradients: docs/benchmarks.md). The loss-falls run
        # takes 32 px images with the ImageNet stem instead (the same compute as 8 px with the CIFAR stem), where the
        # shapes survive the crops and its loss falls clearly within 30 steps.
        archs = (Arch("resnet50-imagenet-stem", "resnet50", 32, False, 2048, 4),
                 Arch("resnet18-cifar-stem", "resnet18", 8, True, 512, 4))
        return Plan(
            dry_run=True, device=torch.device("cpu"), archs=archs,
            warmup=1 if args.warmup is None else args.warmup, steps=1 if args.steps is None else args.steps,
            max_seconds=60 * args.max_minutes, compile_backend=args.compile_backend or "aot_eager", compile_rows=1,
            loss_arch=Arch("resnet18-imagenet-stem", "resnet18", 32, False, 512, 16), loss_steps=30, loss_window=10,
            loss_subset=True, loss_precision="32-true", loss_workers=0, dist_arch=archs[1], dist_steps=3,
            vit_arch=Arch("vit-tiny-8", "timm:vit_tiny_patch16_224", 32, False, 192, 4, patch_size=8),
        )
    archs = (Arch("resnet50-imagenet-stem", "resnet50", 224, False, 2048, args.batch_224, "imagenet"),
             Arch("resnet18-cifar-stem", "resnet18", 32, True, 512, args.batch_32, "cifar10"))
    return Plan(
        dry_run=False, device=torch.device("cuda", torch.cuda.current_device()), archs=archs,
        warmup=3 if args.warmup is None else args.warmup, steps=5 if args.steps is None else args.steps,
        max_seconds=60 * args.max_minutes, compile_backend=args.compile_backend or "inductor",
        compile_rows=len(METHODS) * len(archs),
        loss_arch=Arch("resnet18-cifar-stem", "resnet18", 32, True, 512, 256), loss_steps=200, loss_window=20,
        loss_subset=False, loss_precision="bf16-mixed", loss_workers=min(8, os.cpu_count() or 1),
        dist_arch=Arch("resnet18-cifar-stem", "resnet18", 32, True, 512, 64), dist_steps=5,
        vit_arch=Arch("vit-small-16", "timm:vit_small_patch16_224", 224, False, 384, args.batch_224),
    )


# --- shared pieces ---------------------------------------------------------------------------------------------------
def params_for(method: str, arch: Arch, **overrides: Any) -> ModelParams:
    settings: Dict[str, Any] = dict(
        dataset_name="synthetic", encoder_arch=arch.encoder_arch, embedding_dim=arch.embedding_dim,
        synthetic_image_size=arch.image_size, use_cifar_stem=arch.cifar_stem, batch_size=arch.batch_size,
        num_data_workers=0, max_epochs=1,
    )
    if arch.patch_size is not None:
        settings["patch_size"] = arch.patch_size
    if method in VIT_METHODS:
        # local crops of 3/7 of the image in whole patches (96 px at 224 px with 16-px patches)
        patch = arch.patch_size or 16
        settings.update(use_cifar_stem=None, local_crop_size=max(patch, round(arch.image_size * 3 / 7 / patch) * patch))
    settings.update(overrides)
    return {**METHODS, **VIT_METHODS}[method](**settings)


def autocast(precision: str, device: torch.device) -> ContextManager[Any]:
    """The autocast Lightning's precision plugin puts around the training step."""
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; it never goes down


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:2000]


def short_traceback() -> str:
    return traceback.format_exc()[-3000:]


def all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


@contextlib.contextmanager
def recorded_warnings(into: List[str]) -> Iterator[None]:
    """The distinct warnings of the block, appended to ``into`` (they go to the JSON for whoever reads a GPU run)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                message = f"{warning.category.__name__}: {warning.message}"[:300]
                if message not in into:
                    into.append(message)


class DeviceViews(Dataset):
    """Items ``([one tensor per view], label)`` from a pool of random views made once on ``device``. Indexing a
    device tensor makes a view of it, so a batch costs one stack per view on the device and no host-to-device copy."""

    def __init__(self, shapes: Sequence[Sequence[int]], length: int, pool: int, device: torch.device) -> None:
        generator = torch.Generator(device).manual_seed(0)
        self.views = [torch.randn(pool, *shape, generator=generator, device=device) for shape in shapes]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        i = index % self.views[0].shape[0]
        return [v[i] for v in self.views], i % 10

    def batch(self, size: int) -> List[Tensor]:
        return [v[:size] for v in self.views]


class ViewsCache:
    """The in-memory views, made once per (view shapes, batch, steps) and shared by every row that needs them."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._views: Dict[Tuple[Any, ...], DeviceViews] = {}

    def get(self, params: ModelParams, steps: int) -> DeviceViews:
        shapes = view_shapes(params)
        key = (tuple(tuple(s) for s in shapes), params.batch_size, steps)
        if key not in self._views:
            self._views[key] = DeviceViews(shapes, params.batch_size * steps, 2 * params.batch_size, self.device)
        return self._views[key]


class StepClock(pl.Callback):
    """Each training step's wall time, from one ``on_train_batch_start`` to the next (the last step ends at
    ``on_train_epoch_end``), so that a step includes every hook and the fetch of the next batch, as
    bench_throughput's StepTimer; and each step's loss."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.starts: List[float] = []
        self.end: Optional[float] = None
        self.losses: List[Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, index: int) -> None:
        self.starts.append(now(self.device))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           index: int) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.end = now(self.device)

    def seconds(self) -> List[float]:
        marks = self.starts + ([self.end] if self.end is not None else [])
        return [b - a for a, b in zip(marks, marks[1:])]

    def loss_values(self) -> List[float]:
        return [float(loss) for loss in self.losses]  # one synchronization, after the run


def fit(model: SelfSupervisedMethod, plan: Plan, precision: str, callbacks: Sequence[pl.Callback], *,
        batches: Optional[int] = None, max_epochs: int = 1) -> None:
    trainer = pl.Trainer(
        accelerator=plan.accelerator,
        devices=1,
        precision=precision,  # type: ignore[arg-type]
        max_epochs=max_epochs,
        limit_train_batches=batches if batches is not None else 1.0,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(model)


def timed(step: Callable[[], Any], plan: Plan) -> List[float]:
    """Wall times of ``plan.steps`` calls of ``step`` after ``plan.warmup`` untimed ones."""
    times = []
    for i in range(plan.warmup + plan.steps):
        start = now(plan.device)
        step()
        if i >= plan.warmup:
            times.append(now(plan.device) - start)
    return times


def compile_encoders(model: SelfSupervisedMethod, backend: str) -> None:
    """torch.compile of the online encoder and of the momentum encoder, in place (nn.Module.compile), so that
    parameter names, the optimizer's groups and the EMA's pairing of parameters stay those of the plain modules."""
    model.model.compile(backend=backend)
    if isinstance(model.step.target, MomentumTarget):
        model.step.target.encoder.compile(backend=backend)


def compile_counts() -> Tuple[int, int]:
    """(graphs Dynamo has captured, graph breaks) in this process so far: a compile row that captured nothing ran
    eagerly (Dynamo falls back silently, at its recompile limit for one)."""
    return int(dynamo_counters["stats"]["unique_graphs"]), int(sum(dynamo_counters["graph_break"].values()))


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- timing rows -----------------------------------------------------------------------------------------------------
def plan_rows(plan: Plan) -> List[Row]:
    rows = [Row(method, arch, precision, channels_last, False)
            for arch in plan.archs for method in METHODS for precision in PRECISIONS for channels_last in (False, True)]
    # Last, so that the time guard drops them first; the small network first, as it compiles fastest.
    vit = [Row(method, plan.vit_arch, precision, True, False)  # channels_last: the patch projection's convolution
           for method in VIT_METHODS for precision in VIT_PRECISIONS]
    compiled = [Row(method, arch, COMPILED_PRECISION, True, True) for method in METHODS for arch in plan.archs[::-1]]
    return rows + vit + compiled[: plan.compile_rows]


def static_skip_reason(row: Row, plan: Plan) -> Optional[str]:
    if row.precision == "16-mixed" and plan.device.type != "cuda":
        return "skipped: needs CUDA"
    if plan.dry_run and row.precision == "bf16-mixed" and not row.channels_last:
        # bf16 convolutions in NCHW fall back to PyTorch's reference kernels on CPUs without native bf16: seconds
        # per step even at 8 px, while channels_last reaches oneDNN's.
        return "skipped: dry run (bf16 without channels_last is PyTorch's slow reference convolution on CPUs)"
    return None


class TimeGuard:
    """Skips a timing row when it would end after the deadline, judging by the longest finished row of its kind
    (network, compiled or not)."""

    def __init__(self, seconds: float, start: float) -> None:
        self.limit, self.start = seconds, start
        self.longest: Dict[Tuple[str, bool], float] = {}

    def skip_reason(self, row: Row) -> Optional[str]:
        used = time.perf_counter() - self.start
        expected = self.longest.get((row.arch.name, row.compiled), FIRST_COMPILE_GUESS_S if row.compiled else 0.0)
        if used + expected <= self.limit:
            return None
        return f"skipped: --max-minutes {self.limit / 60:g} ({used:.0f} s used, such a row takes {expected:.0f} s)"

    def record(self, row: Row, seconds: float) -> None:
        key = (row.arch.name, row.compiled)
        self.longest[key] = max(self.longest.get(key, 0.0), seconds)


def backbone_seconds(model: SelfSupervisedMethod, views: Sequence[Tensor], precision: str, plan: Plan) -> List[float]:
    """Forward + backward of the model's own encoder on the views its online network sees, and the no-grad forward
    of its momentum encoder on the key views (as MomentumTarget, one batch), under the step's autocast."""
    encoder = model.model
    # a masked-image step (MAE): its one view with all its tokens, what the step would cost without masking
    online = [views[i] for i in getattr(model.step, "online_views", [0])]
    target = getattr(model.step, "target", None)
    momentum = target if isinstance(target, MomentumTarget) else None
    keys = torch.cat([views[i] for i in momentum.key_views]) if momentum is not None else None

    def step() -> None:
        encoder.zero_grad(set_to_none=True)
        with autocast(precision, plan.device):
            embeddings = torch.cat(encode_views(encoder, online))
        embeddings.float().square().mean().backward()
        if momentum is not None:
            with torch.no_grad(), autocast(precision, plan.device):
                momentum.encoder(keys)

    return timed(step, plan)


def measure_row(row: Row, plan: Plan, cache: ViewsCache) -> Dict[str, Any]:
    params = params_for(row.method, row.arch, channels_last=row.channels_last, pin_data_memory=False)
    dataset = cache.get(params, plan.warmup + plan.steps)
    torch.manual_seed(0)
    model = SelfSupervisedMethod(params, train_dataset=dataset).to(plan.device)
    if row.compiled:
        torch._dynamo.reset()  # every row's modules are new: stale entries would count against the recompile limit
        compile_encoders(model, plan.compile_backend)
    graphs_before, breaks_before = compile_counts()  # Module.compile captures nothing until the first call
    # The backbone first: it compiles the modules the fit then reuses, and on the CPU the peak RSS only grows.
    reset_peak_memory(plan.device)
    backbone = statistics.median(backbone_seconds(model, dataset.batch(params.batch_size), row.precision, plan))
    backbone_peak = peak_memory_mb(plan.device)
    model.zero_grad(set_to_none=True)
    reset_peak_memory(plan.device)
    clock = StepClock(plan.device)
    fit(model, plan, row.precision, [FullQueue(), clock], batches=plan.warmup + plan.steps)
    framework_peak = peak_memory_mb(plan.device)
    losses, steps = clock.loss_values(), clock.seconds()
    if len(steps) != plan.warmup + plan.steps:
        raise RuntimeError(f"the fit ran {len(steps)} steps; expected {plan.warmup + plan.steps}")
    if not all_finite(losses):
        raise FloatingPointError(f"non-finite training loss: {losses}")
    framework = statistics.median(steps[plan.warmup:])
    graphs_after, breaks_after = compile_counts()
    if row.compiled and graphs_after == graphs_before:
        raise RuntimeError("torch.compile captured no graph: the row ran eagerly")
    return {
        "compile_graphs": graphs_after - graphs_before if row.compiled else None,
        "compile_graph_breaks": breaks_after - breaks_before if row.compiled else None,
        "framework_img_s": params.batch_size / framework,
        "backbone_img_s": params.batch_size / backbone,
        "ratio": framework / backbone,
        "framework_step_ms": 1000 * framework,
        "backbone_step_ms": 1000 * backbone,
        "framework_peak_mb": framework_peak,
        "backbone_peak_mb": backbone_peak,
        "last_loss": losses[-1],
    }


def row_record(row: Row, plan: Plan) -> Dict[str, Any]:
    return {
        "method": row.method, "arch": row.arch.encoder_arch, "stem": "cifar" if row.arch.cifar_stem else "imagenet",
        "image_size": row.arch.image_size, "batch_size": row.arch.batch_size, "precision": row.precision,
        "channels_last": row.channels_last, "compile": row.compiled,
        "compile_backend": plan.compile_backend if row.compiled else None,
        "framework_img_s": None, "backbone_img_s": None, "ratio": None, "framework_step_ms": None,
        "backbone_step_ms": None, "framework_peak_mb": None, "backbone_peak_mb": None, "last_loss": None,
        "compile_graphs": None, "compile_graph_breaks": None,
        "status": None, "error": None, "seconds": None,
    }


def run_rows(plan: Plan, guard: TimeGuard, cache: ViewsCache) -> List[Dict[str, Any]]:
    records = []
    rows = plan_rows(plan)
    for number, row in enumerate(rows, 1):
        record = row_record(row, plan)
        reason = static_skip_reason(row, plan) or guard.skip_reason(row)
        if reason is not None:
            record["status"] = reason
        else:
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Lightning's advice on workers and tensor cores, 40 times over
                    record.update(measure_row(row, plan, cache))
                record["status"] = OK
            except Exception as error:  # one broken configuration must not hide the others
                record.update(status=ERROR, error=describe(error), traceback=short_traceback())
            finally:
                if row.compiled:
                    torch._dynamo.reset()
                release(plan.device)
            record["seconds"] = time.perf_counter() - start
            guard.record(row, record["seconds"])
        print(f"[{number}/{len(rows)}] {row_label(record)}: {row_summary(record)}", flush=True)
        records.append(record)
    return records


def row_label(r: Dict[str, Any]) -> str:
    flags = ("channels_last " if r["channels_last"] else "") + ("compile " if r["compile"] else "")
    return f"{r['method']} {r['arch']} {r['image_size']} px {r['precision']} {flags}".strip()


def row_summary(r: Dict[str, Any]) -> str:
    if r["status"] == OK:
        return (f"framework {r['framework_img_s']:.0f} img/s, backbone {r['backbone_img_s']:.0f} img/s, ratio "
                f"{r['ratio']:.2f} ({r['seconds']:.1f} s)")
    return r["status"] + (f": {r['error']}" if r["error"] else "")


# --- augmentation ----------------------------------------------------------------------------------------------------
def measure_augmentation(plan: Plan) -> List[Dict[str, Any]]:
    """The batched views of a uint8 batch on the device, per method (their augmentations differ) and network."""
    records = []
    for arch in plan.archs:
        for method in METHODS:
            record: Dict[str, Any] = {"method": method, "arch": arch.encoder_arch, "image_size": arch.image_size,
                                      "batch_size": arch.batch_size, "dataset": None, "uint8_side": None,
                                      "views": None, "augmentation_ms": None, "step_ms": None, "step_config": None,
                                      "share": None, "status": None, "error": None}
            try:
                overrides = {"dataset_name": arch.augmentation_dataset} if arch.augmentation_dataset else {}
                params = params_for(method, arch, **overrides)
                make = batch_views(params, channels_last=True)  # as the channels_last rows receive their views
                info = data.dataset_info(params)
                side = data.stored_image_size(info, data.crop_size(params, info))
                generator = torch.Generator(plan.device).manual_seed(0)
                images = torch.randint(0, 256, (arch.batch_size, 3, side, side), generator=generator,
                                       device=plan.device, dtype=torch.uint8)
                seconds = augmentation_seconds(make, images, plan)
                views = make(images)
                record.update(dataset=params.dataset_name, uint8_side=side,
                              views=" + ".join(f"{v.shape[-1]} px" for v in views),
                              augmentation_ms=1000 * statistics.median(seconds), status=OK)
            except Exception as error:
                record.update(status=ERROR, error=describe(error), traceback=short_traceback())
            records.append(record)
    return records


def augmentation_seconds(make: data.BatchedViews, images: Tensor, plan: Plan) -> List[float]:
    calls = iter(range(plan.warmup + plan.steps))
    return timed(lambda: make(images, next(calls)), plan)  # each call a new step: new random parameters


def add_augmentation_shares(augmentation: List[Dict[str, Any]], rows: Sequence[Dict[str, Any]]) -> None:
    """share = augmentation / (augmentation + framework step): the step of a real run, which makes its views on the
    device, against the framework step of the same method and network, preferably in bf16-mixed with channels_last
    (the views are made in that format)."""
    preference = [("bf16-mixed", True), ("32-true", True), ("16-mixed", True), ("32-true", False)]
    for record in augmentation:
        candidates = {(r["precision"], r["channels_last"]): r for r in rows
                      if r["status"] == OK and not r["compile"] and r["method"] == record["method"]
                      and r["arch"] == record["arch"] and r["image_size"] == record["image_size"]}
        reference = next((candidates[k] for k in preference if k in candidates), None)
        if record["status"] != OK or reference is None:
            continue
        step = reference["framework_step_ms"]
        record.update(step_ms=step, step_config=f"{reference['precision']}, channels_last",
                      share=record["augmentation_ms"] / (record["augmentation_ms"] + step))


# --- distributed -----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def single_process_group(backend: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    try:
        torch.distributed.init_process_group(backend, rank=0, world_size=1)
        try:
            yield
        finally:
            torch.distributed.destroy_process_group()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def collectives_in_a_world_of_one() -> Iterator[None]:
    """selfsup.dist treats one process as no distribution at all (``is_distributed()`` is False for a world of one),
    so a single-process group alone runs none of its collectives. Inside this block any initialized group counts, and
    SyncBatchNorm, the gathers with and without gradient and shuffle-BN take their multi-process code paths."""

    def initialized() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    with mock.patch.object(collectives, "is_distributed", initialized), \
            mock.patch.object(sync_batchnorm, "is_distributed", initialized):
        yield


def _counting(name: str, original: Callable[..., Any], counts: Dict[str, int]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    return counted


@contextlib.contextmanager
def counted_collectives(counts: Dict[str, int]) -> Iterator[None]:
    """Counts the calls of torch.distributed's collectives (the evidence that a forced run really ran them)."""
    with contextlib.ExitStack() as stack:
        for name in COUNTED_COLLECTIVES:
            original = getattr(torch.distributed, name, None)
            if original is not None:
                stack.enter_context(mock.patch.object(torch.distributed, name, _counting(name, original, counts)))
        yield


def distributed_run(method: str, flags: Dict[str, Any], forced: bool, plan: Plan,
                    cache: ViewsCache) -> Dict[str, Any]:
    record: Dict[str, Any] = {"method": method, "flags": flags,
                              "collectives": "forced" if forced else "library (no-ops in a world of one)",
                              "losses": [], "finite": False, "collective_calls": {}, "status": None, "error": None}
    counts: Dict[str, int] = {}
    try:
        params = params_for(method, plan.dist_arch, pin_data_memory=False, **flags)
        dataset = cache.get(params, plan.dist_steps)
        clock = StepClock(plan.device)
        with (collectives_in_a_world_of_one() if forced else contextlib.nullcontext()), counted_collectives(counts):
            torch.manual_seed(0)  # the same weights and queue in both modes
            model = SelfSupervisedMethod(params, train_dataset=dataset)
            fit(model, plan, "32-true", [FullQueue(), clock], batches=plan.dist_steps)
        losses = clock.loss_values()
        record.update(losses=losses, finite=all_finite(losses), collective_calls=dict(counts))
        problems = []
        if len(losses) != plan.dist_steps:
            problems.append(f"{len(losses)} steps ran; expected {plan.dist_steps}")
        if not record["finite"]:
            problems.append(f"non-finite loss: {losses}")
        if forced:
            expected = [("a gather", sum(counts.get(n, 0) for n in GATHERS)),
                        ("all_reduce", counts.get("all_reduce", 0))]
            if flags.get("shuffle_batch_norm"):
                expected.append(("broadcast", counts.get("broadcast", 0)))
            problems += [f"no {name} ran" for name, calls in expected if calls == 0]
        record.update(status=OK if not problems else ERROR, error="; ".join(problems) or None)
    except Exception as error:
        record.update(status=ERROR, error=describe(error), traceback=short_traceback())
    finally:
        release(plan.device)
    return record


def distributed_check(plan: Plan, cache: ViewsCache) -> Dict[str, Any]:
    backend = "nccl" if plan.device.type == "cuda" else "gloo"
    result: Dict[str, Any] = {"backend": backend, "world_size": 1, "arch": plan.dist_arch.encoder_arch,
                              "image_size": plan.dist_arch.image_size, "batch_size": plan.dist_arch.batch_size,
                              "precision": "32-true", "steps": plan.dist_steps, "runs": [], "agreement": [],
                              "ok": False, "error": None, "warnings": []}
    start = time.perf_counter()
    try:
        with recorded_warnings(result["warnings"]), single_process_group(backend):
            for method, flags in DISTRIBUTED_RUNS:
                runs = [distributed_run(method, flags, forced, plan, cache) for forced in (False, True)]
                result["runs"] += runs
                if all(r["status"] == OK for r in runs):
                    plain, forced_losses = runs[0]["losses"], runs[1]["losses"]
                    difference = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(plain, forced_losses))
                    result["agreement"].append({"method": method, "max_relative_difference": difference,
                                                "ok": difference <= LOSS_AGREEMENT_RTOL})
        if torch.distributed.is_initialized():
            raise RuntimeError("the process group is still initialized after destroy_process_group")
    except Exception as error:
        result.update(error=describe(error), traceback=short_traceback())
    result["seconds"] = time.perf_counter() - start
    result["ok"] = (result["error"] is None and len(result["runs"]) == 2 * len(DISTRIBUTED_RUNS)
                    and all(r["status"] == OK for r in result["runs"])
                    and len(result["agreement"]) == len(DISTRIBUTED_RUNS) and all(a["ok"] for a in result["agreement"]))
    return result


# --- loss falls ------------------------------------------------------------------------------------------------------
def loss_run(plan: Plan) -> Dict[str, Any]:
    """SimCLR on the built-in synthetic images through the real loader and the batched augmentation on the device.
    A long run sees new images every step; the dry run's 30 steps see one fixed batch (new views each step), whose
    loss falls reliably, where new images at that length leave it within the noise."""
    arch, steps = plan.loss_arch, plan.loss_steps
    images = arch.batch_size if plan.loss_subset else arch.batch_size * steps
    epochs = steps if plan.loss_subset else 1
    record: Dict[str, Any] = {"method": "simclr", "arch": arch.encoder_arch, "stem": "cifar" if arch.cifar_stem else
                              "imagenet", "image_size": arch.image_size, "batch_size": arch.batch_size,
                              "precision": plan.loss_precision, "steps": steps, "window": plan.loss_window,
                              "fixed_subset": plan.loss_subset, "train_images": images, "workers": plan.loss_workers,
                              "first_mean": None, "last_mean": None, "fell": False, "img_s": None, "seconds": None,
                              "losses": [], "status": None, "error": None, "warnings": []}
    start = time.perf_counter()
    try:
        params = params_for("simclr", arch, synthetic_train_size=images, synthetic_val_size=arch.batch_size,
                            num_data_workers=plan.loss_workers, max_epochs=epochs)
        record["augmentation_backend"] = params.augmentation_backend
        torch.manual_seed(0)
        model = SelfSupervisedMethod(params)
        clock = StepClock(plan.device)
        with recorded_warnings(record["warnings"]):
            fit(model, plan, plan.loss_precision, [clock], max_epochs=epochs)
        seconds = time.perf_counter() - start
        losses = clock.loss_values()
        window = plan.loss_window
        first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
        fell = len(losses) == steps and all_finite(losses) and last < first
        record.update(losses=losses, first_mean=first, last_mean=last, fell=fell,
                      img_s=arch.batch_size * len(losses) / seconds, status=OK if fell else ERROR)
        if len(losses) != steps:
            record["error"] = f"{len(losses)} steps ran; expected {steps}"
        elif not all_finite(losses):
            record["error"] = "non-finite loss"
        elif not fell:
            record["error"] = f"the loss did not fall: mean of the first {window} steps {first:.4f}, last {last:.4f}"
    except Exception as error:
        record.update(status=ERROR, error=describe(error), traceback=short_traceback())
    finally:
        release(plan.device)
    record["seconds"] = time.perf_counter() - start
    return record


# --- report ----------------------------------------------------------------------------------------------------------
def _number(value: Optional[float], digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def rows_table(rows: Sequence[Dict[str, Any]]) -> str:
    lines = ["| method | arch | px | batch | precision | channels_last | compile | framework img/s | backbone img/s | "
             "ratio | peak MB framework / backbone | status |",
             "|---|---|---:|---:|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        status = r["status"] if r["status"] != ERROR else f"error: {r['error']}"
        lines.append(
            f"| {r['method']} | {r['arch']} ({r['stem']} stem) | {r['image_size']} | {r['batch_size']} | "
            f"{r['precision']} | {'on' if r['channels_last'] else 'off'} | "
            f"{r['compile_backend'] if r['compile'] else 'off'} | {_number(r['framework_img_s'])} | "
            f"{_number(r['backbone_img_s'])} | {_number(r['ratio'], 2)} | "
            f"{_number(r['framework_peak_mb'])} / {_number(r['backbone_peak_mb'])} | {status} |"
        )
    return "\n".join(lines)


def augmentation_table(records: Sequence[Dict[str, Any]]) -> str:
    lines = ["| method | arch | batch | uint8 images -> views | augmentation ms | framework step ms (config) | "
             "share of the step | status |", "|---|---|---:|---|---:|---:|---:|---|"]
    for r in records:
        share = "–" if r["share"] is None else f"{100 * r['share']:.1f}%"
        config = f" ({r['step_config']})" if r["step_config"] else ""
        status = r["status"] if r["status"] != ERROR else f"error: {r['error']}"
        lines.append(f"| {r['method']} | {r['arch']} | {r['batch_size']} | {r['uint8_side']} px -> {r['views']} | "
                     f"{_number(r['augmentation_ms'], 2)} | {_number(r['step_ms'], 1)}{config} | {share} | {status} |")
    return "\n".join(lines)


def distributed_text(result: Dict[str, Any]) -> str:
    verdict = "passed" if result["ok"] else "FAILED"
    lines = [f"Distributed check ({result['backend']}, world size 1, {result['arch']} {result['image_size']} px, "
             f"batch {result['batch_size']}, {result['steps']} steps, 32-true): {verdict}"]
    for r in result["runs"]:
        losses = ", ".join(f"{v:.4f}" for v in r["losses"])
        calls = ", ".join(f"{k} {v}" for k, v in sorted(r["collective_calls"].items())) or "none"
        lines.append(f"- {r['method']} {r['flags']}, collectives {r['collectives']}: losses [{losses}], "
                     f"collective calls: {calls}; {r['status']}" + (f": {r['error']}" if r["error"] else ""))
    for a in result["agreement"]:
        lines.append(f"- {a['method']}: forced vs library losses differ by at most {a['max_relative_difference']:.2e} "
                     f"(relative; tolerance {LOSS_AGREEMENT_RTOL:g}): {'ok' if a['ok'] else 'FAILED'}")
    if result["error"]:
        lines.append(f"- error: {result['error']}")
    return "\n".join(lines)


def loss_text(r: Dict[str, Any]) -> str:
    subset = f"one fixed batch of {r['train_images']} images" if r["fixed_subset"] else f"{r['train_images']} images"
    head = (f"Loss-falls run (SimCLR, {r['arch']} {r['stem']} stem {r['image_size']} px, batch {r['batch_size']}, "
            f"{r['steps']} steps on {subset} of the synthetic data, {r['precision']}, real loader with "
            f"{r['workers']} workers, batched augmentation)")
    if r["first_mean"] is None:
        return f"{head}: FAILED: {r['error']}"
    verdict = "fell" if r["fell"] else f"FAILED: {r['error']}"
    return (f"{head}: mean loss of the first {r['window']} steps {r['first_mean']:.4f}, of the last {r['window']} "
            f"{r['last_mean']:.4f}: {verdict} ({r['img_s']:.0f} img/s end to end, {r['seconds']:.1f} s)")


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def environment(plan: Plan) -> Dict[str, Any]:
    cuda = plan.device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(plan.device) if cuda else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda if cuda else None,
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def settings(plan: Plan) -> Dict[str, Any]:
    return {
        "dry_run": plan.dry_run,
        "accelerator": plan.accelerator,
        "warmup_steps": plan.warmup,
        "timed_steps": plan.steps,
        "max_minutes": plan.max_seconds / 60,
        "archs": [{"name": a.name, "encoder_arch": a.encoder_arch, "image_size": a.image_size,
                   "cifar_stem": a.cifar_stem, "batch_size": a.batch_size} for a in plan.archs],
        "compile_subset": (f"{COMPILED_PRECISION} + channels_last only, {plan.compile_rows} row(s) (one per method "
                           f"and network), run last; backend {plan.compile_backend}"),
    }


@contextlib.contextmanager
def run_settings(plan: Plan) -> Iterator[None]:
    """The process-wide settings of a run, restored afterwards (the test calls main() inside pytest)."""
    logger = logging.getLogger("pytorch_lightning")
    level, threads, benchmark = logger.level, torch.get_num_threads(), torch.backends.cudnn.benchmark
    logger.setLevel(logging.WARNING)  # the per-fit lines (GPU available, LOCAL_RANK, ...) would bury the rows
    if plan.dry_run:
        # Tiny tensors gain nothing from a second thread, and every operation's thread barrier stalls while another
        # process holds a core, as on a shared 2-core machine (selfsup.data.batched.CPU_THREADS).
        torch.set_num_threads(1)
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: the algorithm search runs in the warmup steps
    try:
        yield
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark


def run(plan: Plan) -> Dict[str, Any]:
    start = time.perf_counter()
    rows_planned = plan_rows(plan)
    print(f"gpu_check on {environment(plan)['device']} ({'CPU dry run' if plan.dry_run else plan.device}): "
          f"{len(rows_planned)} timing rows, {plan.warmup} warmup + {plan.steps} timed steps each; compile rows: "
          f"{settings(plan)['compile_subset']}", flush=True)
    cache = ViewsCache(plan.device)
    distributed = distributed_check(plan, cache)
    print(distributed_text(distributed), flush=True)
    losses = loss_run(plan)
    print(loss_text(losses), flush=True)
    augmentation = measure_augmentation(plan)
    decoding = measure_decoding(plan)
    print(decoding_text(decoding), flush=True)
    rows = run_rows(plan, TimeGuard(plan.max_seconds, start), cache)
    add_augmentation_shares(augmentation, rows)
    errors = [f"row {row_label(r)}: {r['error']}" for r in rows if r["status"] == ERROR]
    errors += [f"augmentation {r['method']} {r['arch']}: {r['error']}" for r in augmentation if r["status"] == ERROR]
    if not distributed["ok"]:
        errors.append("distributed check failed")
    if decoding["status"] != OK:
        errors.append(f"decoding: {decoding['error']}")
    if losses["status"] != OK:
        errors.append(f"loss-falls run: {losses['error']}")
    statuses = [r["status"] for r in rows]
    totals = {
        "seconds": time.perf_counter() - start,
        "rows": len(rows),
        "rows_ok": statuses.count(OK),
        "rows_error": statuses.count(ERROR),
        "rows_skipped": sum(s.startswith("skipped") for s in statuses),
        "distributed_ok": distributed["ok"],
        "loss_fell": losses["fell"],
        "errors": errors,
        "ok": not errors,
        "exit_code": 0 if not errors else 1,
    }
    return {"settings": settings(plan), "environment": environment(plan), "rows": rows, "augmentation": augmentation,
            "decoding": decoding, "distributed": distributed, "loss_run": losses, "totals": totals}


def measure_decoding(plan: Plan) -> Dict[str, Any]:
    """Loader-bound throughput (images/s into the step) of JPEGs decoded by the loader workers vs on the device, and
    how far the device's stored squares are from the loader path's (grey levels)."""
    count, size, side = (16, (60, 80), 32) if plan.dry_run else (512, (375, 500), 256)
    workers = [0] if plan.dry_run else [0, 8]
    record: Dict[str, Any] = {"images": count, "image_size": list(size), "side": side, "rows": []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            paths = generated_folder(scratch, count, size)
            for n in workers:
                host = images_per_second(paths, side, 64, n, plan.device, on_device=False)
                device = images_per_second(paths, side, 64, n, plan.device, on_device=True)
                record["rows"].append({"workers": n, "loader_decode_img_s": host, "device_decode_img_s": device})
            reference = torch.stack([data.build_stored_image_transform(side)(data.load_rgb(p)) for p in paths])
            decoded = data.decode_batch([data.decode.read_bytes(p) for p in paths], side, plan.device).cpu()
            difference = (decoded.int() - reference.int()).abs().float()
            record.update(max_abs_diff=float(difference.max()), mean_abs_diff=float(difference.mean()), status=OK)
    except Exception as error:  # reported, and the check exits non-zero
        record.update(status=ERROR, error=describe(error), traceback=short_traceback())
    return record


def decoding_text(record: Dict[str, Any]) -> str:
    if record["status"] != OK:
        return f"decoding: ERROR {record['error']}"
    lines = [f"{record['images']} generated {record['image_size'][0]}x{record['image_size'][1]} JPEGs to "
             f"{record['side']} px; device stored squares vs the loader path's: max {record['max_abs_diff']:.0f}, "
             f"mean {record['mean_abs_diff']:.3f} grey levels",
             "| loader workers | loader decode img/s | device decode img/s |", "|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['loader_decode_img_s']:.0f} | {r['device_decode_img_s']:.0f} |"
              for r in record["rows"]]
    return "\n".join(lines)


def report_text(report: Dict[str, Any]) -> str:
    totals = report["totals"]
    env = report["environment"]
    gpu = report["settings"]["accelerator"] == "gpu"
    memory = "torch.cuda.max_memory_allocated of each measurement" if gpu else "the process's peak RSS so far"
    notes = (f"img/s: source images (2 views each) per second; ratio: framework step / backbone step; peak MB: "
             f"{memory}. Compile rows: {report['settings']['compile_subset']}.")
    parts = [
        f"## Training step ({env['device']}, torch {env['torch']}, Lightning {env['pytorch_lightning']})",
        rows_table(report["rows"]),
        notes,
        "## Batched augmentation on the device",
        augmentation_table(report["augmentation"]),
        "## Decoding: loader workers vs the device",
        decoding_text(report["decoding"]),
        "## Checks",
        distributed_text(report["distributed"]),
        loss_text(report["loss_run"]),
        f"## Totals: {totals['seconds']:.0f} s; rows {totals['rows_ok']} ok, {totals['rows_skipped']} skipped, "
        f"{totals['rows_error']} errors; distributed check {'passed' if totals['distributed_ok'] else 'FAILED'}; "
        f"loss {'fell' if totals['loss_fell'] else 'did NOT fall'}; {'OK' if totals['ok'] else 'FAILED'}",
    ]
    parts += [f"- {error}" for error in totals["errors"]]
    return "\n\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False). This check needs a GPU; pass "
              "--cpu-dry-run to run every code path on tiny sizes on the CPU instead.", file=sys.stderr)
        return 2
    plan = make_plan(args)
    with run_settings(plan):
        report = run(plan)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(jsonable(report), f, indent=1, allow_nan=False)
    print("\n" + report_text(report) + f"\n\nJSON: {out}", flush=True)
    return int(report["totals"]["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
