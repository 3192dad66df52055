"""Training-step throughput of every preset next to its required compute, measured in one run.

For each preset, the framework step is a real ``pl.Trainer`` fit of ``SelfSupervisedMethod`` on views already in
memory (no decoding or augmentation: ``bench_data.py`` and ``bench_augment.py`` measure those), timed from one
``on_train_batch_start`` to the next, so it includes the forward passes, the loss, backward, the optimizer and
scheduler steps, the EMA and queue updates and Lightning's logging.

The required compute is the same networks in bare PyTorch: forward + backward of every view the online network sees
(encoder, projection and prediction MLPs) plus a no-grad forward of the views the target network (encoder and
projection) sees; no loss, no optimizer, no framework. ``ratio`` = framework step / required compute is the
overhead the framework adds: the loss with its similarity matrices, the optimizer, the EMA and queue updates and
the bookkeeping. The bare encoder alone (no heads) is the third column, for scale. A masked-image method (MAE, I-JEPA)
has one view and no projection heads: its required compute is the encoder's forward + backward of that view with all
its tokens, what the step would cost without masking, so its ratio below 1 is what masking saves.

All are the median step time over ``--steps`` steps after ``--warmup`` steps; the measurements are interleaved
``--rounds`` times and the fastest round is kept, because other load on the machine only ever slows a step down.
With ``--peer`` the same preset as implemented by lightly (``benchmarks/peers.py``: same encoder, optimizer and
schedule) is timed the same way in the same rounds, on the same in-memory views; ``peer ratio`` = our step / its step
(below 1: ours is faster). Peak memory: the process's peak RSS on CPU (each preset runs in its own process, the bare
networks first), ``torch.cuda.max_memory_allocated`` on GPU.

Example (the table in the benchmarks issue's closing note):
    python benchmarks/bench_throughput.py --batch-size 256 --image-size 32
    python benchmarks/bench_throughput.py --peer --presets simclr byol   # next to lightly's step
    python benchmarks/bench_throughput.py --presets mae_tiny ijepa_tiny dino_vit_tiny moco_v3_vit_tiny   # ViT-Tiny/4
"""

from __future__ import annotations

import argparse
import copy
import csv
import multiprocessing
import os
import resource
import statistics
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup import data
from selfsup.config import PRESETS, ModelParams
from selfsup.methods.steps import JointEmbeddingStep
from selfsup.nn.target import encode_views
from selfsup.train.module import SelfSupervisedMethod

try:
    from benchmarks import peers
except ImportError:  # run as a script: Python puts benchmarks/ itself, not the repository, on sys.path
    import peers  # type: ignore[no-redef]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS))
    parser.add_argument("--encoder-arch", default=None, help="every preset's encoder (default: each preset's own)")
    parser.add_argument("--image-size", type=int, default=32, help="side of the global views in px")
    parser.add_argument("--batch-size", type=int, default=256, help="source images per step")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem (8x the compute at 32 px)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved framework / bare measurements per preset")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peer", action="store_true",
                        help="also time each preset's lightly implementation (pip install -e .[peer]); presets without "
                             "one are timed alone")
    parser.add_argument("--csv", default=os.path.join(REPO, "benchmarks", "results", "bench_throughput.csv"))
    return parser.parse_args(argv)


class InMemoryViews(Dataset):
    """``length`` items of ready-made views (one tensor per view of ``shapes``) and a label, all from one seed."""

    def __init__(self, shapes: Sequence[Sequence[int]], length: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.views = [torch.randn(length, *shape, generator=generator) for shape in shapes]
        self.labels = torch.arange(length) % 10

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        return [v[index] for v in self.views], self.labels[index]


class StepTimer(pl.Callback):
    """Wall time between consecutive training-batch starts (one full optimizer step each)."""

    def __init__(self) -> None:
        self.starts: List[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.accelerator.__class__.__name__ == "CUDAAccelerator":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


class FullQueue(pl.Callback):
    """Fills the method's memory (a queue of keys) before the first step: it starts empty, and a run of a few steps
    would otherwise time the loss against a fraction of its K negatives instead of the steady state."""

    def on_train_start(self, trainer: pl.Trainer, module: SelfSupervisedMethod) -> None:
        memory = getattr(module.step, "memory", None)
        if memory is not None:
            slots, size, dim = memory.rows.shape
            rows = torch.nn.functional.normalize(torch.randn(size, dim, device=module.device), dim=1)
            memory.write([rows] * (max(memory.views) + 1))  # the same unit rows for each of its views


def bench_params(name: str, args: argparse.Namespace) -> ModelParams:
    overrides: Dict[str, Any] = dict(
        dataset_name="synthetic",
        synthetic_image_size=args.image_size,
        batch_size=args.batch_size,
        use_cifar_stem=args.cifar_stem,
        num_data_workers=0,
        max_epochs=1,
    )
    if args.encoder_arch is not None:
        overrides["encoder_arch"] = args.encoder_arch
    preset = PRESETS[name]()
    if preset.uses_queue:
        overrides["K"] = max(args.batch_size, preset.K // args.batch_size * args.batch_size)
    return PRESETS[name](**overrides)


def view_shapes(params: ModelParams) -> List[List[int]]:
    global_side = data.crop_size(params)
    local = data.local_crop_size(params, global_side)
    return [[3, global_side, global_side]] * params.num_global_crops + [[3, local, local]] * params.num_local_crops


def framework_step_seconds(params: ModelParams, dataset: Dataset, args: argparse.Namespace,
                           peer: Optional[str] = None) -> List[float]:
    """Step times of a ``pl.Trainer`` fit of our module, or with ``peer`` of that preset's lightly implementation
    (fed the same views by a plain DataLoader)."""
    model: pl.LightningModule
    if peer is None:
        model, loader = SelfSupervisedMethod(params, train_dataset=dataset), None
    else:
        model, loader = peers.PeerMethod(peer, params), DataLoader(dataset, batch_size=params.batch_size)
    timer = StepTimer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator=args.accelerator,
            devices=1,
            max_epochs=1,
            limit_train_batches=args.warmup + args.steps + 1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            # lightly's memory bank starts full of random keys; ours is filled the same way
            callbacks=[FullQueue(), timer] if peer is None else [timer],
        )
        trainer.fit(model, train_dataloaders=loader)
    steps = [b - a for a, b in zip(timer.starts, timer.starts[1:])]
    return steps[args.warmup :]


def required_compute_seconds(
    params: ModelParams, model: SelfSupervisedMethod, args: argparse.Namespace, heads: bool
) -> List[float]:
    """Bare PyTorch, no Lightning, no loss, no optimizer: forward + backward of every online view and a no-grad
    forward of the target network's views. With ``heads`` the networks are the method's (online: encoder,
    projection and prediction MLPs; target: encoder and projection), otherwise the encoder alone."""
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    online_encoder = copy.deepcopy(model.model).to(device)  # same architecture, stem and memory format
    joint = isinstance(model.step, JointEmbeddingStep)  # else a masked-image step: its one view, all tokens
    heads = heads and joint
    projection = copy.deepcopy(model.step.projection).to(device) if heads else torch.nn.Identity()
    prediction = copy.deepcopy(model.step.prediction).to(device) if heads else torch.nn.Identity()
    target_encoder = copy.deepcopy(model.model).to(device).requires_grad_(False)
    target_projection = copy.deepcopy(projection).requires_grad_(False)
    shapes = view_shapes(params)
    views = [torch.randn(args.batch_size, *shape, device=device) for shape in shapes]
    online_views = model.step.online_views if joint else [0]
    query_views = model.step.query_views if joint else [0]
    target_views = model.step.target.key_views if joint and params.use_lagging_model else []

    def step() -> None:
        online_encoder.zero_grad(set_to_none=True)
        embeddings = encode_views(online_encoder, [views[i] for i in online_views])
        projections = dict(zip(online_views, projection(torch.cat(embeddings)).chunk(len(embeddings))))
        queries = prediction(torch.cat([projections[i] for i in query_views]))
        queries.square().mean().backward()
        if target_views:
            with torch.no_grad():
                target_projection(target_encoder(torch.cat([views[i] for i in target_views])))

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_preset(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Runs in its own process, so that the peak-memory figures belong to this preset alone."""
    torch.manual_seed(0)
    params = bench_params(name, args)
    shapes = view_shapes(params)
    length = (args.warmup + args.steps + 1) * args.batch_size
    dataset = InMemoryViews(shapes, length)
    probe = SelfSupervisedMethod(params, train_dataset=dataset)
    framework: List[float] = []
    peer: List[float] = []
    with_peer = args.peer and name in peers.PEERS
    backbone: List[float] = []
    network: List[float] = []
    bare_memory = framework_memory = 0.0
    for _ in range(args.rounds):
        backbone.append(statistics.median(required_compute_seconds(params, probe, args, heads=False)))
        network.append(statistics.median(required_compute_seconds(params, probe, args, heads=True)))
        bare_memory = max(bare_memory, peak_memory_mb())
        framework.append(statistics.median(framework_step_seconds(params, dataset, args)))
        framework_memory = max(framework_memory, peak_memory_mb())
        if with_peer:
            peer.append(statistics.median(framework_step_seconds(params, dataset, args, peer=name)))
    framework_step, backbone_step, network_step = min(framework), min(backbone), min(network)
    peer_step = min(peer) if peer else float("nan")
    return {
        "preset": name,
        "views": "+".join(f"{s[1]}px" for s in shapes),
        "online_views": len(getattr(probe.step, "online_views", [0])),
        "target_views": (len(probe.step.target.key_views) if isinstance(probe.step, JointEmbeddingStep) else 1)
        if params.use_lagging_model else 0,
        "framework_images_per_s": args.batch_size / framework_step,
        "required_images_per_s": args.batch_size / network_step,
        "framework_step_ms": 1000 * framework_step,
        "required_step_ms": 1000 * network_step,
        "backbone_step_ms": 1000 * backbone_step,
        "ratio": framework_step / network_step,
        "ratio_to_backbone": framework_step / backbone_step,
        "peer_step_ms": 1000 * peer_step,
        "peer_ratio": framework_step / peer_step,
        "framework_peak_mb": framework_memory,
        "bare_peak_mb": bare_memory,
    }


def _worker(name: str, args: argparse.Namespace, queue: "multiprocessing.Queue[Dict[str, Any]]") -> None:
    queue.put(measure_preset(name, args))


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    context = multiprocessing.get_context("spawn")
    rows = []
    for name in args.presets:
        queue: "multiprocessing.Queue[Dict[str, Any]]" = context.Queue()
        process = context.Process(target=_worker, args=(name, args, queue))
        process.start()
        rows.append(queue.get())
        process.join()
        row = rows[-1]
        peer_text = f", lightly {row['peer_step_ms']:.0f} ms" if row["peer_step_ms"] == row["peer_step_ms"] else ""
        print(f"{name}: framework {row['framework_step_ms']:.0f} ms, required {row['required_step_ms']:.0f} ms, "
              f"ratio {row['ratio']:.3f}{peer_text}", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem = "CIFAR" if args.cifar_stem else "ImageNet"
    encoder = args.encoder_arch or "each preset's encoder"
    print(f"\n{encoder} ({stem} stem for ResNets), batch {args.batch_size}, {args.image_size} px, "
          f"{args.accelerator}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; CSV: {args.csv}\n")
    peer_head, peer_rule = (" lightly ms | peer ratio |", "---:|---:|") if args.peer else ("", "")
    print("| preset | views | online / target views | framework ms | required ms | encoder-only ms | ratio | "
          f"ratio to encoder | framework img/s | peak MB (framework / bare) |{peer_head}")
    print(f"|---|---|---:|---:|---:|---:|---:|---:|---:|---:|{peer_rule}")
    for r in rows:
        peer_cells = f" {r['peer_step_ms']:.0f} | {r['peer_ratio']:.3f} |" if args.peer else ""
        print(f"| {r['preset']} | {r['views']} | {r['online_views']} / {r['target_views']} | "
              f"{r['framework_step_ms']:.0f} | {r['required_step_ms']:.0f} | {r['backbone_step_ms']:.0f} | "
              f"{r['ratio']:.3f} | {r['ratio_to_backbone']:.2f} | {r['framework_images_per_s']:.0f} | "
              f"{r['framework_peak_mb']:.0f} / {r['bare_peak_mb']:.0f} |{peer_cells}")
    return rows


if __name__ == "__main__":
    main()
