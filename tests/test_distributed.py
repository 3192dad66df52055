"""Distributed training on CPU: two gloo processes against one process that holds the whole global batch.

Workers are spawned with torch.multiprocessing and given the environment a launcher such as torchrun gives
(MASTER_ADDR, RANK, LOCAL_RANK, ...), so each one runs ``pl.Trainer(strategy="ddp", devices=2)`` as an externally
launched process: Lightning's own DDP wrapper, gradient averaging and distributed samplers. One spawn serves the
whole module (process start-up dominates the cost): the ``ranks`` fixture runs every distributed part, and the tests
compare what the ranks saved with single-process runs on the same data and the same initialization.

Equivalence: with batch B per process, the mean over processes of the per-process losses and the DDP-averaged
gradient of every parameter equal the loss and gradients of one process with batch 2B, within 1e-5. These runs use
float64, so the measured difference is the algorithm's, not float32 rounding (BatchNorm's backward on small batches
amplifies that to ~1e-5); the SyncBatchNorm layer check runs in float32. Each gathering flag also has a control run
without it, which must differ, so the comparison is shown to be sensitive.
"""

from __future__ import annotations

import copy
import functools
import os
import socket
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import build_criterion, cpu_trainer
from torch import Tensor, nn
from torch.utils.data import Dataset

from selfsup import distributed as selfsup_dist
from selfsup.config import DINOViTTinyParams, MAETinyParams, ModelParams, SimCLRParams, TiCoParams, VICRegParams
from selfsup.nn.batchrenorm import BatchRenorm1d
from selfsup.nn.target import MomentumTarget
from selfsup.train.module import SelfSupervisedMethod

pytestmark = [pytest.mark.ddp, pytest.mark.slow]

WORLD_SIZE = 2
LOCAL_BATCH = 4  # images per process per step; the single-process reference uses WORLD_SIZE * LOCAL_BATCH
IMAGE = 16
TOLERANCE = 1e-5
PRECISION = "64-true"  # equivalence runs in float64: what remains is the algorithm, not float32 rounding


# --- harness ---------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, job: Callable[[int], Any], port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(WORLD_SIZE),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=120))
    try:
        torch.save(job(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(job: Callable[[int], Any], out_dir: Path) -> List[Any]:
    """Run ``job(rank)`` in WORLD_SIZE gloo processes; returns what each rank returned, in rank order."""
    mp.spawn(_worker, args=(job, _free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def max_difference(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name].double() - b[name].double()).abs().max()) for name in a)


# --- collectives, shuffle-BN and SyncBatchNorm, directly on torch.distributed ----------------------------------------

FEATURES = 6


def _global_batch(seed: int, *shape: int) -> Tensor:
    return torch.randn(WORLD_SIZE * LOCAL_BATCH, *shape, generator=torch.Generator().manual_seed(seed))


def _own(x: Tensor, rank: int) -> Tensor:
    return x[rank * LOCAL_BATCH : (rank + 1) * LOCAL_BATCH]


def _key_encoder(batch_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 8), *([nn.BatchNorm1d(8)] if batch_norm else []))


def _keys(rank: int, batch_norm: bool, shuffle: bool) -> Tensor:
    views = [_own(_global_batch(view, FEATURES), rank) for view in (1, 2)]
    target = MomentumTarget(_key_encoder(batch_norm), nn.Identity(), [0, 1], shuffle)
    return torch.cat(target(views, [None, None]))


def _batch_norm_case(layer: nn.Module, x: Tensor, weights: Tensor) -> Dict[str, Tensor]:
    """Output and gradients of sum(layer(x) * weights), with the affine parameters drawn at random first."""
    torch.manual_seed(0)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    x = x.clone().requires_grad_()
    output = layer(x)
    (output * weights).sum().backward()
    return {"output": output.detach(), "input_grad": x.grad, "weight_grad": layer.weight.grad}


def _sync_bn_case(rank: int) -> Dict[str, Tensor]:
    """A synchronized BatchNorm2d on this rank's slice; the ranks' losses sum to the single-process loss."""
    layer = selfsup_dist.convert_sync_batchnorm(nn.BatchNorm2d(3))
    out = _batch_norm_case(layer, _own(_global_batch(3, 3, 5, 5), rank), _own(_global_batch(4, 3, 5, 5), rank))
    return {
        "output": out["output"],
        "input_grad": out["input_grad"],
        "weight_grad": selfsup_dist.all_reduce_sum(layer.weight.grad),
        "bias_grad": selfsup_dist.all_reduce_sum(layer.bias.grad),
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
        "layer_type": torch.tensor(isinstance(layer, selfsup_dist.SyncBatchNorm)),
    }


def collectives_job(rank: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    # gather_with_grad: loss_r = <gather(x), w_r>, so x_r's gradient is the own slice of w_0 + w_1.
    x = _own(_global_batch(0, 3), rank).requires_grad_()
    (selfsup_dist.gather_with_grad(x) * _global_batch(10 + rank, 3)).sum().backward()
    out["gathered_grad"] = x.grad
    out["gathered_labels"] = selfsup_dist.gather_with_grad(torch.arange(LOCAL_BATCH) + 100 * rank)
    # all_reduce_with_grad: loss_r = <sum_r x_r, w_r>, so every x_r receives w_0 + w_1.
    y = _own(_global_batch(0, 3), rank).requires_grad_()
    (selfsup_dist.all_reduce_with_grad(y) * _own(_global_batch(20 + rank, 3), 0)).sum().backward()
    out["reduced_grad"] = y.grad
    # shuffle-BN round trip on sample ids
    ids = torch.arange(LOCAL_BATCH) + rank * LOCAL_BATCH
    shuffled, unshuffle = selfsup_dist.batch_shuffle(ids)
    out["shuffled"], out["unshuffled"] = shuffled, selfsup_dist.batch_unshuffle(shuffled, unshuffle)
    for batch_norm in (True, False):
        for shuffle in (True, False):
            out[f"keys bn={batch_norm} shuffle={shuffle}"] = _keys(rank, batch_norm, shuffle)
    out["sync_bn"] = _sync_bn_case(rank)
    return out


@pytest.fixture(scope="module")
def collectives(ranks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [out["collectives"] for out in ranks]


def test_gather_with_grad_returns_each_rank_the_summed_gradient_of_its_slice(collectives):
    summed = _global_batch(10, 3) + _global_batch(11, 3)
    for rank, out in enumerate(collectives):
        torch.testing.assert_close(out["gathered_grad"], _own(summed, rank), rtol=0, atol=1e-6)
        assert out["gathered_labels"].tolist() == [*range(LOCAL_BATCH), *range(100, 100 + LOCAL_BATCH)]


def test_all_reduce_with_grad_sums_gradients_over_ranks(collectives):
    summed = _own(_global_batch(20, 3), 0) + _own(_global_batch(21, 3), 0)
    for out in collectives:
        torch.testing.assert_close(out["reduced_grad"], summed, rtol=0, atol=1e-6)


def test_shuffle_bn_unshuffle_restores_every_rank_and_moves_samples_across_ranks(collectives):
    shuffled = torch.cat([out["shuffled"] for out in collectives])
    assert sorted(shuffled.tolist()) == list(range(WORLD_SIZE * LOCAL_BATCH))  # a permutation of the global batch
    assert any(int(i) >= LOCAL_BATCH for i in collectives[0]["shuffled"])  # rank 0 computes some of rank 1's keys
    for rank, out in enumerate(collectives):
        assert out["unshuffled"].tolist() == list(range(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH))


def test_shuffle_bn_changes_keys_only_through_batch_norm(collectives):
    for out in collectives:
        # Without BatchNorm each key depends on its own image only: shuffling and unshuffling returns the same keys
        # in the same order. With BatchNorm the statistics come from another random subset of the global batch.
        torch.testing.assert_close(out["keys bn=False shuffle=True"], out["keys bn=False shuffle=False"])
        assert (out["keys bn=True shuffle=True"] - out["keys bn=True shuffle=False"]).abs().max() > 1e-3


def test_sync_batch_norm_layer_matches_batch_norm_on_the_global_batch(collectives):
    layer = nn.BatchNorm2d(3)
    single = _batch_norm_case(layer, _global_batch(3, 3, 5, 5), _global_batch(4, 3, 5, 5))
    shared = {
        "weight_grad": single["weight_grad"],
        "bias_grad": layer.bias.grad,
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
    }
    worst = 0.0
    for rank, out in enumerate(collectives):
        got = out["sync_bn"]
        assert bool(got["layer_type"])
        expected = {**shared, "output": _own(single["output"], rank), "input_grad": _own(single["input_grad"], rank)}
        worst = max(worst, max_difference({name: got[name] for name in expected}, expected))
    print(f"SyncBatchNorm layer, 2 x {LOCAL_BATCH} vs BatchNorm2d 1 x {2 * LOCAL_BATCH}: max abs diff {worst:.2e}")
    assert worst < TOLERANCE


# --- real pl.Trainer DDP runs ------------------------------------------------------------------------------------


class FixedViews(Dataset):
    """Two fixed views per image (no random augmentation), so every run and every rank sees the same data."""

    def __init__(self, size: int) -> None:
        self.views = torch.randn(size, 2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))
        self.labels = torch.arange(size) % 2

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[List[Tensor], int]:
        return list(self.views[index]), int(self.labels[index])


def backbone(batch_norm: bool) -> nn.Module:
    norm = [nn.BatchNorm2d(8)] if batch_norm else []
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), *norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


SMALL = dict(
    dataset_name="synthetic",
    synthetic_image_size=IMAGE,
    synthetic_train_size=16,
    synthetic_val_size=64,
    embedding_dim=8,
    mlp_hidden_dim=16,
    dim=8,
    num_data_workers=0,
    max_epochs=1,
)
BN_HEADS = dict(mlp_normalization="bn", projection_output_batch_norm=True)  # SimCLR's preset heads
PLAIN_HEADS = dict(mlp_normalization=None, projection_output_batch_norm=False)  # per-device BN would differ

# The ViT methods' encoder: a ViT-Tiny cut into 16 tokens of 4 px, its own (timm's) initialization.
VIT = dict(embedding_dim=192, patch_size=4, drop_path_rate=0.0)

# name: (preset, overrides, BatchNorm in the backbone, or None for the encoder the params name). The single-process
# reference is the same configuration with plain BatchNorm (sync_batch_norm=None).
EQUIVALENCE: Dict[str, Tuple[Callable[..., ModelParams], Dict[str, Any], Optional[bool]]] = {
    "NT-Xent, gathered negatives": (SimCLRParams, PLAIN_HEADS, False),
    "NT-Xent, sync-BN heads": (SimCLRParams, dict(BN_HEADS, sync_batch_norm="heads"), False),
    "NT-Xent, sync-BN heads and backbone": (SimCLRParams, dict(BN_HEADS, sync_batch_norm="all"), True),
    "NT-Xent, online linear probe": (SimCLRParams, dict(PLAIN_HEADS, online_linear_probe=True), False),
    "VICReg, gathered variance/covariance": (VICRegParams, dict(mlp_normalization=None), False),
    "TiCo, gathered covariance": (TiCoParams, dict(mlp_normalization=None), False),
    "MAE, masks drawn for the global batch": (
        MAETinyParams, dict(VIT, mae_decoder_width=32, mae_decoder_depth=1, mae_decoder_heads=2), None),
    "DINO on a ViT, gathered center": (  # the paper's BN-free head
        DINOViTTinyParams, dict(VIT, num_local_crops=0, num_prototypes=16, mlp_normalization=None), None),
}
# name: (the equivalence case it modifies, overrides that make that case per-device again)
CONTROLS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "NT-Xent, per-device negatives": ("NT-Xent, gathered negatives", dict(gather_negatives_across_devices=False)),
    "NT-Xent, per-device BN heads": ("NT-Xent, sync-BN heads", dict(sync_batch_norm=None)),
    "VICReg, per-device variance/covariance": (
        "VICReg, gathered variance/covariance",
        dict(vicreg_gather_across_devices=False),
    ),
}
QUEUE = dict(SMALL, K=3 * WORLD_SIZE * LOCAL_BATCH, gather_keys_for_queue=True, shuffle_batch_norm=True)
QUEUE_STEPS = 2


def method(
    preset: Callable[..., ModelParams], overrides: Mapping[str, Any], batch_norm: Optional[bool], batch_size: int,
    images: int
) -> SelfSupervisedMethod:
    torch.manual_seed(0)  # the same initialization in every process and in the single-process reference
    params = preset(**{**SMALL, **overrides, "batch_size": batch_size})
    encoder = None if batch_norm is None else backbone(batch_norm)
    return SelfSupervisedMethod(params, backbone=encoder, train_dataset=FixedViews(images))


def trainer(devices: int, callbacks: Tuple[pl.Callback, ...] = (), **kwargs: Any) -> pl.Trainer:
    strategy = "ddp" if devices > 1 else "auto"
    return cpu_trainer(devices=devices, strategy=strategy, callbacks=list(callbacks), num_sanity_val_steps=0, **kwargs)


class StepRecorder(pl.Callback):
    """Per training step: the loss, the parameter gradients the optimizer sees (averaged over ranks by DDP), the
    queue the loss read and the keys this rank is about to enqueue (callback hooks run before the module's
    on_after_backward enqueues them)."""

    def __init__(self) -> None:
        self.losses: List[Tensor] = []
        self.grads: List[Dict[str, Tensor]] = []
        self.enqueued: List[Tensor] = []
        self.queues_read: List[Tensor] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        self.grads.append({n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None})

    def on_after_backward(self, trainer: pl.Trainer, module: Any) -> None:
        memory = getattr(module.step, "memory", None)
        if memory is not None:
            self.enqueued.append(module._step_output.pair_step.keys[memory.views[0]].detach().clone())
            self.queues_read.append(memory.rows[0].T.clone())  # what this step's loss read, as [D, K] columns

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def one_step(case: Tuple[Callable[..., ModelParams], Dict[str, Any], Optional[bool]], devices: int) -> Dict[str, Any]:
    """Loss and gradients of one step on the 2 x LOCAL_BATCH fixed images, split over ``devices`` processes."""
    preset, overrides, batch_norm = case
    recorder = StepRecorder()
    model = method(preset, overrides, batch_norm, WORLD_SIZE * LOCAL_BATCH // devices, WORLD_SIZE * LOCAL_BATCH)
    trainer(devices, (recorder,), max_steps=1, limit_val_batches=0, precision=PRECISION).fit(model)
    return {"loss": recorder.losses[0], "grads": recorder.grads[0]}


def lightning_job(rank: int, checkpoint_dir: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {name: one_step(case, WORLD_SIZE) for name, case in EQUIVALENCE.items()}
    for name, (reference, overrides) in CONTROLS.items():
        preset, base, batch_norm = EQUIVALENCE[reference]
        out[name] = one_step((preset, {**base, **overrides}, batch_norm), WORLD_SIZE)

    # MoCo with a gathered queue and shuffle-BN; then its checkpoint, for the single process to load.
    recorder = StepRecorder()
    moco = method(ModelParams, QUEUE, True, LOCAL_BATCH, QUEUE_STEPS * WORLD_SIZE * LOCAL_BATCH)
    fitted = trainer(WORLD_SIZE, (recorder,), limit_val_batches=0)
    fitted.fit(moco)
    fitted.save_checkpoint(os.path.join(checkpoint_dir, "ddp.ckpt"))
    memory = moco.step.memory
    out["queue"] = {"enqueued": recorder.enqueued, "keys": memory.rows[0].T.clone(), "ptr": int(memory.ptr)}
    out["queue"]["read"] = recorder.queues_read
    out["state"] = {name: t.clone() for name, t in moco.state_dict().items()}

    # The same without gathering keys: DDP's buffer broadcast leaves every rank with rank 0's queue, and fit warns.
    recorder = StepRecorder()
    local = method(ModelParams, dict(QUEUE, gather_keys_for_queue=False), True, LOCAL_BATCH, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(WORLD_SIZE, (recorder,), limit_val_batches=0).fit(local)
    out["local queue"] = {"enqueued": recorder.enqueued, "read": recorder.queues_read}
    out["local queue"]["warnings"] = [str(w.message) for w in caught]

    # Validation probes on the built-in synthetic data (random views differ per rank; the probes must not).
    probed = trainer(WORLD_SIZE, limit_train_batches=1)
    probed.fit(SelfSupervisedMethod(ModelParams(**SMALL, batch_size=LOCAL_BATCH), backbone=backbone(True)))
    out["probe"] = {k: float(v) for k, v in probed.callback_metrics.items() if k.startswith(("valid_", "train_c"))}

    # A single-process checkpoint loads here and training resumes from it under DDP.
    path = os.path.join(checkpoint_dir, "single.ckpt")
    loaded = SelfSupervisedMethod.load_from_checkpoint(
        path, backbone=backbone(True), train_dataset=FixedViews(QUEUE_STEPS * WORLD_SIZE * LOCAL_BATCH)
    )
    out["loaded single"] = {name: t.clone() for name, t in loaded.state_dict().items()}
    resumed = trainer(WORLD_SIZE, limit_val_batches=0, max_epochs=2)
    resumed.fit(loaded, ckpt_path=path)
    out["resumed global_step"] = resumed.global_step
    return out


def distributed_job(rank: int, checkpoint_dir: str) -> Dict[str, Any]:
    return {"collectives": collectives_job(rank), "lightning": lightning_job(rank, checkpoint_dir)}


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Holds single.ckpt (a single-process MoCo run, written here) and ddp.ckpt (written by the DDP workers)."""
    path = tmp_path_factory.mktemp("checkpoints")
    single = method(ModelParams, QUEUE, True, LOCAL_BATCH, QUEUE_STEPS * WORLD_SIZE * LOCAL_BATCH)
    fitted = trainer(1, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shuffle_batch_norm has no effect in a single process
        fitted.fit(single)
    fitted.save_checkpoint(path / "single.ckpt")
    return path


@pytest.fixture(scope="module")
def ranks(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> List[Dict[str, Any]]:
    """What each of the two DDP ranks recorded (one spawn for the whole module)."""
    job = functools.partial(distributed_job, checkpoint_dir=str(checkpoint_dir))
    return run_distributed(job, tmp_path_factory.mktemp("ranks"))


@pytest.fixture(scope="module")
def lightning(ranks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [out["lightning"] for out in ranks]


@pytest.fixture(scope="module")
def references() -> Dict[str, Dict[str, Any]]:
    """One process, batch 2 x LOCAL_BATCH, plain BatchNorm: the ground truth of every equivalence case."""
    return {
        name: one_step((preset, {**overrides, "sync_batch_norm": None}, batch_norm), 1)
        for name, (preset, overrides, batch_norm) in EQUIVALENCE.items()
    }


def compare_with_single_process(ranks: List[Dict[str, Any]], reference: Dict[str, Any]) -> Tuple[float, float]:
    """(|mean over ranks of the losses - reference loss|, max over ranks and parameters of |grad - reference|)."""
    loss = abs(float(torch.stack([out["loss"] for out in ranks]).mean() - reference["loss"]))
    grads = max(max_difference(out["grads"], reference["grads"]) for out in ranks)
    return loss, grads


@pytest.mark.parametrize("name", list(EQUIVALENCE))
def test_two_processes_equal_one_process_with_the_global_batch(name, lightning, references):
    loss, grads = compare_with_single_process([out[name] for out in lightning], references[name])
    print(f"{name}: 2 x {LOCAL_BATCH} vs 1 x {2 * LOCAL_BATCH}, max abs diff loss {loss:.2e}, gradients {grads:.2e}")
    assert len(references[name]["grads"]) >= 6  # backbone and head weights and biases all received gradients
    assert loss < TOLERANCE and grads < TOLERANCE
    assert max_difference(lightning[0][name]["grads"], lightning[1][name]["grads"]) == 0  # DDP: identical on ranks


def test_the_online_probe_learns_from_the_global_batch(references):
    # its BatchNorm's statistics and its gradient, compared with the others by the equivalence test above
    assert {"online_probe.linear.weight", "online_probe.linear.bias"} <= references["NT-Xent, online linear probe"][
        "grads"].keys()


@pytest.mark.parametrize("name", list(CONTROLS))
def test_per_device_statistics_differ_from_the_global_batch(name, lightning, references):
    loss, grads = compare_with_single_process([out[name] for out in lightning], references[CONTROLS[name][0]])
    print(f"control {name}: max abs diff loss {loss:.2e}, gradients {grads:.2e}")
    assert max(loss, grads) > 1e-3


def test_gathered_queue_is_identical_on_every_rank_and_holds_all_keys_in_rank_order(lightning):
    queues = [out["queue"] for out in lightning]
    torch.testing.assert_close(queues[0]["keys"], queues[1]["keys"], rtol=0, atol=0)
    expected = torch.cat([queue["enqueued"][step] for step in range(QUEUE_STEPS) for queue in queues])  # [16, D]
    filled = expected.shape[0]
    assert all(queue["ptr"] == filled for queue in queues)
    torch.testing.assert_close(queues[0]["keys"][:, :filled], expected.T, rtol=0, atol=0)
    assert not torch.equal(queues[0]["enqueued"][0], queues[1]["enqueued"][0])
    for step in range(QUEUE_STEPS):
        torch.testing.assert_close(queues[0]["read"][step], queues[1]["read"][step], rtol=0, atol=0)


def test_without_gathering_every_rank_reads_rank_0s_queue_and_fit_warns(lightning):
    queues = [out["local queue"] for out in lightning]
    for queue in queues:
        assert any("ModelParams.K without gathering, with 2 processes" in message for message in queue["warnings"])
    read_at_second_step = [queue["read"][1] for queue in queues]
    torch.testing.assert_close(read_at_second_step[0], read_at_second_step[1], rtol=0, atol=0)
    torch.testing.assert_close(read_at_second_step[1][:, :LOCAL_BATCH], queues[0]["enqueued"][0].T, rtol=0, atol=0)


def test_validation_probes_log_the_same_values_on_every_rank(lightning):
    probes = [out["probe"] for out in lightning]
    assert {"valid_class_acc", "valid_knn_acc"} <= probes[0].keys()
    assert probes[0] == probes[1]


@pytest.mark.filterwarnings("ignore:Trainer max_epochs=2 differs", "ignore:the checkpoint holds the RNG states")
def test_ddp_checkpoint_loads_and_resumes_in_a_single_process(lightning, checkpoint_dir):
    path = checkpoint_dir / "ddp.ckpt"
    data = FixedViews(QUEUE_STEPS * WORLD_SIZE * LOCAL_BATCH)
    loaded = SelfSupervisedMethod.load_from_checkpoint(path, backbone=backbone(True), train_dataset=data)
    assert max_difference(loaded.state_dict(), lightning[0]["state"]) == 0
    resumed = trainer(1, limit_val_batches=0, max_epochs=2)
    resumed.fit(loaded, ckpt_path=path)
    assert resumed.global_step == QUEUE_STEPS + 2 * QUEUE_STEPS  # 2 DDP steps, then 4 steps of the global batch


def test_single_process_checkpoint_loads_and_resumes_under_ddp(lightning, checkpoint_dir):
    saved = torch.load(checkpoint_dir / "single.ckpt", weights_only=False)["state_dict"]
    for out in lightning:
        assert max_difference(out["loaded single"], saved) == 0
        assert out["resumed global_step"] == 2 * QUEUE_STEPS + QUEUE_STEPS  # 4 single-process steps, then 2 DDP


# --- the same flags in a single process -------------------------------------------------------------------------------


def test_sync_batch_norm_is_plain_batch_norm_in_one_process_and_keeps_state_dict_names():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), BatchRenorm1d(6))
    synced = selfsup_dist.convert_sync_batchnorm(copy.deepcopy(plain))
    assert isinstance(synced[1], selfsup_dist.SyncBatchNorm) and isinstance(synced[2], BatchRenorm1d)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 4)
    for mode in (True, False):
        plain.train(mode), synced.train(mode)
        torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.state_dict(), plain.state_dict(), rtol=0, atol=0)
    assert isinstance(selfsup_dist.convert_sync_batchnorm(nn.BatchNorm2d(3)), selfsup_dist.SyncBatchNorm)


def test_sync_batch_norm_field_converts_the_chosen_modules_and_the_ema_copy():
    params = dict(SMALL, mlp_normalization="bn", batch_size=LOCAL_BATCH, K=8)

    def synchronized(module: nn.Module) -> bool:
        return any(isinstance(m, selfsup_dist.SyncBatchNorm) for m in module.modules())

    heads = SelfSupervisedMethod(ModelParams(**params, sync_batch_norm="heads"), backbone=backbone(True))
    assert synchronized(heads.step.projection) and synchronized(heads.step.target.projection)
    assert not synchronized(heads.model) and not synchronized(heads.step.target.encoder)
    everything = SelfSupervisedMethod(ModelParams(**params, sync_batch_norm="all"), backbone=backbone(True))
    assert synchronized(everything.model) and synchronized(everything.step.target.encoder)
    plain = SelfSupervisedMethod(ModelParams(**params), backbone=backbone(True))
    assert not synchronized(plain)
    plain.load_state_dict(everything.state_dict())  # checkpoints move freely between the settings


def test_gather_fields_resolve_to_the_gather_or_the_identity():
    local = build_criterion(SimCLRParams(gather_negatives_across_devices=False))
    assert local.gather is selfsup_dist.identity
    assert build_criterion(SimCLRParams()).gather is selfsup_dist.gather_with_grad
    assert build_criterion(VICRegParams()).fn.keywords["gather"] is selfsup_dist.gather_with_grad
    vicreg_local = build_criterion(VICRegParams(vicreg_gather_across_devices=False))
    assert vicreg_local.fn.keywords["gather"] is selfsup_dist.identity


def test_sync_batch_norm_validation():
    with pytest.raises(ValueError, match="ModelParams.sync_batch_norm: got 'head'.*Did you mean 'heads'"):
        ModelParams(sync_batch_norm="head")
    with pytest.warns(UserWarning, match="sync_batch_norm='heads' but the projection and prediction MLPs"):
        ModelParams(sync_batch_norm="heads")
    with pytest.warns(UserWarning, match="shuffle_batch_norm is redundant with sync_batch_norm='all'"):
        ModelParams(sync_batch_norm="all", shuffle_batch_norm=True)
