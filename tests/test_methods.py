"""Barlow Twins, SimSiam, MoCo v3, DINO, SwAV, SupCon, NNCLR, SimCLR v2: closed forms, stop-gradients and the
method-specific training mechanics (frozen prototypes, constant predictor learning rate, any backbone)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import build_criterion, cpu_trainer, tiny
from torch import nn

from selfsup.config import (
    PRESETS,
    BarlowTwinsParams,
    DINOParams,
    MoCoV3Params,
    ModelParams,
    NNCLRParams,
    SimCLRParams,
    SimCLRv2Params,
    SimSiamParams,
    SupConParams,
    SwAVParams,
    WMSEParams,
)
from selfsup.methods import PairStep, barlow_twins, dino, swav, wmse
from selfsup.nn.heads import PrototypeLayer
from selfsup.train.module import SelfSupervisedMethod

NO_LABELS = torch.zeros(0)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- Barlow Twins --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [1.0, 0.024])
def test_barlow_collapse_is_d_times_scale(factor):
    z = torch.ones(32, 16)
    out = build_criterion(BarlowTwinsParams(loss_constant_factor=factor))([z, None], [None, z], None, NO_LABELS)
    assert out.loss.item() == pytest.approx(16 * factor, rel=1e-6)


def test_barlow_whitened_equal_views_is_zero_and_affine_invariant():
    n, d = 256, 8
    a = randn(n, d)
    u, _ = torch.linalg.qr(a - a.mean(0))
    z = u * math.sqrt(n)  # zero mean, biased covariance = identity
    assert barlow_twins.barlow_twins_loss(z, z, 0.0051).item() == pytest.approx(0.0, abs=1e-6)
    x, y = randn(64, 8, seed=1), randn(64, 8, seed=2)
    scale, shift = torch.rand(8, dtype=torch.float64) + 0.5, randn(8, seed=3)
    assert barlow_twins.barlow_twins_loss(x * scale + shift, y, 0.0051).item() == pytest.approx(
        barlow_twins.barlow_twins_loss(x, y, 0.0051).item(), rel=1e-6
    )


# --- SimSiam -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction,expected", [("aligned", -1.0), ("orthogonal", 0.0)])
def test_simsiam_aligned_and_orthogonal(direction, expected):
    p = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    z = p * 5 if direction == "aligned" else torch.tensor([[0.0, 1.0], [-4.0, 0.0]])
    out = build_criterion(SimSiamParams())([p, p], [z, z], None, NO_LABELS)  # mean of the two orderings
    assert out.loss.item() == pytest.approx(expected, abs=1e-7)


# --- MoCo v3 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0.2, 1.0])
def test_moco_v3_collapse_is_4_tau_log_b(T):
    b = 64
    z = F.normalize(torch.ones(b, 8), dim=1)
    out = build_criterion(MoCoV3Params(T=T))([z, z], [z, z], None, NO_LABELS)
    assert out.loss.item() == pytest.approx(4 * T * math.log(b), rel=1e-5)


def test_moco_v3_negatives_are_the_other_views_keys_only():
    criterion = build_criterion(MoCoV3Params())
    assert criterion.batch_negatives and not criterion.same_view_negatives


# --- DINO ----------------------------------------------------------------------------------------------------------


def test_dino_all_zero_logits_is_log_k_and_center_update():
    k = 4096
    criterion = build_criterion(DINOParams(num_prototypes=k, num_local_crops=0))
    zeros = torch.zeros(8, k)
    out = criterion([zeros, zeros], [zeros, zeros], None, NO_LABELS)
    assert out.loss.item() == pytest.approx(math.log(k), rel=1e-6)
    teacher = [randn(8, k).float(), randn(8, k, seed=1).float()]
    criterion.after_step(PairStep([zeros, zeros], teacher), out)
    assert torch.allclose(criterion.center, 0.1 * torch.cat(teacher).mean(0), atol=1e-7)


def test_dino_loss_is_at_least_teacher_entropy_with_equality_when_distributions_match():
    teacher, center = randn(4, 10), randn(10, seed=1)
    t_s, t_t = 0.1, 0.04
    probs = F.softmax((teacher - center) / t_t, dim=1)
    entropy = -(probs * probs.log()).sum(1).mean()
    matching_student = (teacher - center) / t_t * t_s  # softmax(student / t_s) == teacher probabilities
    assert dino.dino_loss(matching_student, teacher, center, t_s, t_t).item() == pytest.approx(
        entropy.item(), rel=1e-9
    )
    assert dino.dino_loss(randn(4, 10, seed=2), teacher, center, t_s, t_t).item() > entropy.item()


def test_dino_teacher_temperature_warmup():
    criterion = build_criterion(
        DINOParams(
            teacher_temperature_warmup_start=0.04, teacher_temperature=0.07, teacher_temperature_warmup_epochs=30
        )
    )
    for epoch, expected in [(0, 0.04), (15, 0.055), (30, 0.07), (100, 0.07)]:
        criterion.set_epoch(epoch)
        assert criterion.teacher_temperature == pytest.approx(expected)


# --- SwAV ----------------------------------------------------------------------------------------------------------


def test_sinkhorn_rows_sum_to_one_and_columns_to_b_over_k():
    b, k = 256, 3000
    scores = F.normalize(randn(b, 128), dim=1) @ F.normalize(randn(k, 128, seed=1), dim=1).T
    codes = swav.sinkhorn_knopp(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(codes.sum(1), torch.ones(b, dtype=torch.float64), atol=1e-12)
    assert codes.sum(0).mean().item() == pytest.approx(b / k, rel=1e-9)
    assert codes.sum(0).std().item() < 1e-3 * b / k


def test_swav_zero_scores_give_uniform_codes_and_log_k():
    k = 30
    criterion = build_criterion(SwAVParams(num_prototypes=k, dim=4, swav_queue_length=0, num_local_crops=0))
    nn.init.zeros_(criterion.prototypes.weight)  # all scores 0
    z = F.normalize(torch.randn(8, 4), dim=1)
    assert torch.allclose(criterion._codes(z, None), torch.full((8, k), 1 / k))
    out = criterion([z, z], [z, z], None, NO_LABELS)
    assert out.loss.item() == pytest.approx(math.log(k), rel=1e-6)


def test_swav_queue_fills_then_enlarges_the_sinkhorn_batch():
    params = SwAVParams(num_prototypes=8, dim=4, batch_size=4, swav_queue_length=8, swav_queue_start_epoch=1,
                        num_local_crops=0)
    step = SelfSupervisedMethod(params).step
    memory, criterion = step.memory, step.criterion
    assert memory.views == [0, 1] and memory.gather and memory.whole  # one slot per global view, gathered
    keys = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(2)]
    step.set_epoch(0)
    memory.write(keys)
    assert int(memory.filled) == 0 and memory.read() is None  # not active before the start epoch
    step.set_epoch(1)
    memory.write(keys)
    assert torch.equal(memory.rows[1, :4], keys[1]) and int(memory.filled) == 4 and memory.read() is None
    newer = [F.normalize(torch.randn(4, 4), dim=1) for _ in range(2)]
    memory.write(newer)
    assert torch.equal(memory.read()[0], torch.cat([keys[0], newer[0]]))
    with_queue = criterion._codes(keys[0], memory.read()[0])
    assert with_queue.shape == criterion._codes(keys[0], None).shape == (4, 8)
    assert not torch.allclose(with_queue, criterion._codes(keys[0], None))


# --- SupCon ----------------------------------------------------------------------------------------------------------


def test_supcon_with_unique_labels_equals_nt_xent():
    z1, z2 = F.normalize(randn(6, 8), dim=1), F.normalize(randn(6, 8, seed=1), dim=1)
    supcon = build_criterion(SupConParams(T=0.2))([z1, z2], [z1, z2], None, torch.arange(6))
    nt_xent = build_criterion(SimCLRParams(T=0.2))([z1, z2], [z1, z2], None, NO_LABELS)
    assert supcon.loss.item() == pytest.approx(nt_xent.loss.item(), rel=1e-9)


def supcon_reference(z: torch.Tensor, labels: torch.Tensor, T: float) -> float:
    """Khosla et al. eq. 2 (L_out) with explicit loops over the 2B views."""
    n = z.shape[0]
    total = 0.0
    for i in range(n):
        others = [a for a in range(n) if a != i]
        denominator = sum(math.exp(float(z[i] @ z[a]) / T) for a in others)
        positives = [p for p in others if labels[p] == labels[i]]
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / T) / denominator) for p in positives) / len(positives)
    return total / n


def test_supcon_matches_the_papers_l_out():
    z1, z2 = F.normalize(randn(6, 8), dim=1), F.normalize(randn(6, 8, seed=1), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    out = build_criterion(SupConParams(T=0.1))([z1, z2], [z1, z2], None, labels)
    assert out.loss.item() == pytest.approx(
        supcon_reference(torch.cat([z1, z2]), torch.cat([labels, labels]), 0.1), rel=1e-9
    )


def test_supcon_rejects_unlabeled_batches():
    z = F.normalize(torch.randn(4, 8), dim=1)
    with pytest.raises(ValueError, match="needs a label for every training image"):
        build_criterion(SupConParams())([z, z], [z, z], None, torch.full((4,), -1))


# --- NNCLR -----------------------------------------------------------------------------------------------------------


def test_nnclr_with_the_batch_in_the_support_set_is_info_nce_of_keys_against_queries():
    k1, k2 = F.normalize(randn(6, 8), dim=1), F.normalize(randn(6, 8, seed=1), dim=1)
    p1, p2 = F.normalize(randn(6, 8, seed=2), dim=1), F.normalize(randn(6, 8, seed=3), dim=1)
    memory = torch.cat([k1, k2])[None]  # each key's nearest neighbour is itself
    out = build_criterion(NNCLRParams(T=0.1))([p1, p2], [k1, k2], memory, NO_LABELS)
    target = torch.arange(6)
    expected = (F.cross_entropy(k2 @ p1.T / 0.1, target) + F.cross_entropy(k1 @ p2.T / 0.1, target)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_nnclr_first_step_uses_each_key_as_its_neighbour_without_gradient():
    """An empty support set makes each key its own neighbour: the loss is the one with the keys in the support set,
    and, as every neighbour, it is detached, so no gradient reaches keys that carry it (the online target without a
    stop-gradient, which the checks allow)."""
    k1, k2 = (F.normalize(randn(6, 8, seed=s), dim=1).requires_grad_() for s in (0, 1))
    p1, p2 = (F.normalize(randn(6, 8, seed=s), dim=1).requires_grad_() for s in (2, 3))
    criterion = build_criterion(NNCLRParams(T=0.1, use_target_stop_gradient=False))
    out = criterion([p1, p2], [k1, k2], torch.zeros(1, 0, 8, dtype=torch.float64), NO_LABELS)
    assert out.loss.item() == pytest.approx(
        criterion([p1, p2], [k1, k2], torch.cat([k1, k2]).detach()[None], NO_LABELS).loss.item(), rel=1e-12)
    grads = torch.autograd.grad(out.loss, [k1, k2, p1, p2], allow_unused=True)
    assert grads[0] is None and grads[1] is None and grads[2] is not None and grads[3] is not None


# --- no gradient into any target / teacher / key branch --------------------------------------------------------------


@pytest.mark.parametrize("name", ["moco_v2", "moco_v3", "byol", "simsiam", "dino", "swav", "nnclr"])
def test_no_gradient_reaches_the_target_branch(name):
    model = SelfSupervisedMethod(tiny(PRESETS[name]))
    views = [torch.randn(8, 3, 32, 32) for _ in range(model.params.num_global_crops)]
    views += [torch.randn(8, 3, 14, 14) for _ in range(model.params.num_local_crops)]
    _, projections = model.step._online_projections(model.model, views)
    keys = model.step.target(views, projections)
    assert all(k is None or not k.requires_grad for k in keys)
    assert not any(p.requires_grad for p in model.step.target.parameters())


def test_simclr_keys_keep_their_gradient():
    model = SelfSupervisedMethod(tiny(SimCLRParams))
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    keys = model.step.target(views, model.step._online_projections(model.model, views)[1])
    assert all(k.requires_grad for k in keys)


# --- training mechanics ----------------------------------------------------------------------------------------------


def test_simclr_v2_head_is_three_bn_layers_with_output_bn():
    head = SelfSupervisedMethod(tiny(SimCLRv2Params)).step.projection.net
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert not head[-1].affine


class GroupLrs(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.lrs.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def test_simsiam_predictor_learning_rate_is_not_scheduled():
    recorder = GroupLrs()
    cpu_trainer(callbacks=[recorder], limit_val_batches=0).fit(SelfSupervisedMethod(tiny(SimSiamParams)))
    assert [lrs["regular constant lr"] for lrs in recorder.lrs] == [0.05] * 4
    assert [lrs["regular"] for lrs in recorder.lrs] == pytest.approx(
        [0.05 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    )


@pytest.mark.parametrize("preset", [DINOParams, SwAVParams])
def test_prototypes_are_frozen_during_the_first_epoch(preset):
    model = SelfSupervisedMethod(tiny(preset, freeze_prototypes_epochs=1, max_epochs=2))
    prototypes = next(m for m in model.step.modules() if isinstance(m, PrototypeLayer)).weight
    start = prototypes.detach().clone()

    class Check(pl.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            if trainer.current_epoch == 0:
                assert torch.equal(prototypes, start)

    cpu_trainer(callbacks=[Check()], limit_train_batches=2, limit_val_batches=0, max_epochs=2).fit(model)
    assert not torch.equal(prototypes, start)


@pytest.mark.parametrize("layer,width", [("avgpool", 512), ("layer3", 256 * 2 * 2), ("-2", 512)])
def test_encoder_layer_takes_a_hidden_representation(layer, width):
    model = SelfSupervisedMethod(tiny(ModelParams, encoder_layer=layer, embedding_dim=width))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, width)
    cpu_trainer(fast_dev_run=True).fit(model)


def test_unknown_encoder_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="encoder_layer: 'layer9' is not a submodule"):
        SelfSupervisedMethod(tiny(ModelParams, encoder_layer="layer9"))


def test_any_backbone_module():
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    model = SelfSupervisedMethod(
        tiny(BarlowTwinsParams, embedding_dim=16, mlp_hidden_dim=32, dim=32), backbone=backbone
    )
    assert model.model is backbone
    trainer = cpu_trainer(fast_dev_run=True)
    trainer.fit(model)
    assert torch.isfinite(trainer.callback_metrics["step_train_loss"])


# --- W-MSE -----------------------------------------------------------------------------------------------------------


def test_whitening_gives_zero_mean_identity_covariance_as_the_cholesky_formula():
    x = randn(128, 16) @ randn(16, 16, seed=1) + 3.0  # correlated, shifted features
    white = wmse.whiten(x, eps=0.0)
    assert torch.allclose(white.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(white.T @ white / 127, torch.eye(16, dtype=torch.float64), atol=1e-10)
    centred = (x - x.mean(0)).numpy()
    lower = np.linalg.cholesky(centred.T @ centred / 127)
    assert np.allclose(white.numpy(), centred @ np.linalg.inv(lower).T, atol=1e-10)


@pytest.mark.parametrize("key, expected", [([7.0, 10.0, 13.0, 16.0], 0.0), ([4.0, 3.0, 2.0, 1.0], 4.0)])
def test_wmse_in_one_dimension_compares_the_signs_of_the_standardized_views(key, expected):
    """In 1-D, whitening standardizes and the L2 normalization keeps the sign: a positive affine image of the query
    gives 0, a reversed order 2 - 2cos(pi) = 4 on every row."""
    params = WMSEParams(batch_size=4, wmse_whitening_size=4, dim=1)
    criterion = build_criterion(params)
    query = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    out = criterion([query, None], [None, torch.tensor(key, dtype=torch.float64)[:, None]], None, NO_LABELS)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)


def test_wmse_whitens_each_sub_batch_and_averages_the_partitions():
    x = randn(16, 3)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    grouped = wmse.whiten_in_groups(x, order, 8, eps=0.0)
    for rows in order.view(2, 8):  # every sub-batch on its own has identity covariance
        assert torch.allclose(grouped[rows].T @ grouped[rows] / 7, torch.eye(3, dtype=torch.float64), atol=1e-10)
    one = build_criterion(WMSEParams(batch_size=16, wmse_whitening_size=16, dim=3))
    four = build_criterion(WMSEParams(batch_size=16, wmse_whitening_size=16, dim=3, wmse_whitening_iterations=4))
    views = ([x, None], [None, randn(16, 3, seed=1)])
    assert four(*views).loss.item() == pytest.approx(one(*views).loss.item(), abs=1e-12)  # one sub-batch: no choice


def test_wmse_collapse_with_shrinkage_is_two_and_both_views_get_gradients():
    params = WMSEParams(batch_size=8, wmse_whitening_size=8, dim=4, wmse_whitening_eps=0.1)
    constant = torch.ones(8, 4, dtype=torch.float64)
    assert build_criterion(params)([constant, None], [None, constant]).loss.item() == pytest.approx(2.0, abs=1e-12)
    a, b = randn(8, 4).requires_grad_(), randn(8, 4, seed=1).requires_grad_()
    build_criterion(params)([a, None], [None, b]).loss.backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=200), "wmse_whitening_size: 128 must divide batch_size 200"),
    (dict(dim=128), "wmse_whitening_size: 128 rows cannot whiten 128 dimensions"),
])
def test_wmse_rejects_sub_batches_that_cannot_be_whitened(overrides, message):
    with pytest.raises(ValueError, match=message):
        WMSEParams(**overrides)
