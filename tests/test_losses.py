"""Loss functions and criteria against closed forms and brute-force references (methods.md section 2)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import build_criterion

from selfsup.config import BYOLParams, EqCoParams, ModelParams, SimCLRParams, VICRegParams
from selfsup.methods import PairStep, contrastive, losses, vicreg, view_pairs
from selfsup.methods.contrastive import ContrastiveCriterion


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


# --- InfoNCE / EqCo ------------------------------------------------------------------------------------------------


# Long reductions (65,536 negatives) are computed in float64: a float32 sum's rounding depends on the CPU's kernels.
@pytest.mark.parametrize("K", [1, 16, 65536])
def test_info_nce_all_equal_logits_is_log_k_plus_1(K):
    pos = torch.full((4,), 0.3, dtype=torch.float64)
    neg = torch.full((4, K), 0.3, dtype=torch.float64)
    assert contrastive.info_nce_loss(pos, neg, temperature=0.2).item() == pytest.approx(math.log(K + 1), rel=1e-12)


@pytest.mark.parametrize("T, rounded", [(0.2, 6.0926), (0.07, 0.0401)])
def test_info_nce_perfect_positive_orthogonal_queue(T, rounded):
    # methods.md 2.1: log(1 + K e^{-1/T}) = 6.0926 at T=.2, 0.0401 at T=.07 for K=65536.
    K = 65536
    pos, neg = torch.ones(2, dtype=torch.float64), torch.zeros(2, K, dtype=torch.float64)
    closed_form = math.log1p(K * math.exp(-1 / T))
    assert closed_form == pytest.approx(rounded, abs=1e-4)
    assert contrastive.info_nce_loss(pos, neg, T).item() == pytest.approx(closed_form, rel=1e-12)


def test_eqco_alpha_equal_to_negative_count_is_info_nce():
    q, k, queue = unit(8, 16), unit(8, 16, seed=1), unit(32, 16, seed=2)
    pos, neg = (q * k).sum(1), q @ queue.T
    assert contrastive.eqco_loss(pos, neg, 0.2, alpha=32).item() == pytest.approx(
        contrastive.info_nce_loss(pos, neg, 0.2).item(), abs=1e-12
    )


def test_eqco_matches_original_factor_form_and_positive_margin():
    """Against the original log_softmax_with_factors form (float64, moderate logits) and the margin identity."""
    q, k, queue = unit(8, 16), unit(8, 16, seed=1), unit(256, 16, seed=2)
    pos, neg = (q * k).sum(1), q @ queue.T
    T, alpha = 0.2, 65536
    f = alpha / neg.shape[1]
    logits = torch.cat([pos[:, None], neg], 1) / T
    exp = logits.exp()
    reference = -(logits[:, 0] - torch.log(exp[:, 0] + f * (exp.sum(1) - exp[:, 0]))).mean()
    assert contrastive.eqco_loss(pos, neg, T, alpha).item() == pytest.approx(reference.item(), abs=1e-10)
    margin = T * math.log(f)  # EqCo = InfoNCE with the positive shifted by -T log(alpha/K)
    assert contrastive.eqco_loss(pos, neg, T, alpha).item() == pytest.approx(
        contrastive.info_nce_loss(pos - margin, neg, T).item(), abs=1e-10
    )


def test_eqco_is_stable_where_the_original_form_overflows():
    pos, neg = torch.ones(4, dtype=torch.float16), torch.ones(4, 16, dtype=torch.float16)
    value = contrastive.eqco_loss(pos, neg, temperature=0.07, alpha=65536)  # e^{1/0.07} overflows fp16
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(math.log(1 + 65536), rel=1e-5)


# --- BCE / inner product -----------------------------------------------------------------------------------------


def test_binary_contrastive_loss_by_hand():
    pos, neg = torch.tensor([0.5]), torch.tensor([[0.1, -0.2]])
    T = 0.5
    expected = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.2)) + math.log1p(math.exp(-0.4))
    assert contrastive.binary_contrastive_loss(pos, neg, T).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("cos,expected", [(1.0, 0.0), (0.0, 2.0), (-1.0, 4.0)])
def test_byol_loss_per_ordering_aligned_orthogonal_opposite(cos, expected):
    """BYOLParams: "ip" times loss_constant_factor 2 is 2 - 2cos per ordering: 0 / 2 / 4."""
    p = torch.tensor([[1.0, 0.0]])
    z = torch.tensor([[cos, math.sqrt(max(0.0, 1 - cos * cos))]])
    params = BYOLParams()
    criterion = build_criterion(params)
    one_ordering = criterion.pair_loss(0, 1, PairStep([p, p], [z, z])).loss * params.loss_constant_factor
    assert one_ordering.item() == pytest.approx(expected, abs=1e-6)
    both = criterion([p, p], [z, z], None).loss  # summed over the two orderings
    assert both.item() == pytest.approx(2 * expected, abs=1e-6)


# --- NT-Xent (SimCLR) ----------------------------------------------------------------------------------------------


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, T: float) -> float:
    """SimCLR Algorithm 1 with explicit loops: 2B anchors, 2B-2 negatives each."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    b = n // 2
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        denominator = sum(math.exp(float(z[i] @ z[j]) / T) for j in range(n) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[partner]) / T) / denominator)
    return total / n


def test_simclr_criterion_is_standard_nt_xent():
    params = SimCLRParams()
    criterion = build_criterion(params)
    z1, z2 = unit(6, 8), unit(6, 8, seed=3)
    out = criterion([z1, z2], [z1, z2], None)
    assert out.loss.item() == pytest.approx(nt_xent_reference(z1, z2, params.T), rel=1e-9)


@pytest.mark.parametrize("B", [4, 256])
def test_nt_xent_collapse_is_log_2b_minus_1(B):
    z = F.normalize(torch.ones(B, 8), dim=1)
    out = build_criterion(SimCLRParams())([z, z], [z, z], None)
    assert out.loss.item() == pytest.approx(math.log(2 * B - 1), rel=1e-5)
    assert out.metrics["step_pos_cos"].item() == pytest.approx(1.0)
    assert out.metrics["step_neg_cos"].item() == pytest.approx(1.0)


def test_nt_xent_ideal_case():
    # methods.md 2.4: pairs identical, all others orthogonal: log(1 + (2B-2) e^{-1/T}) = 1.0629 for B=8, T=.5.
    z = torch.eye(8, dtype=torch.float64)
    out = build_criterion(SimCLRParams(T=0.5))([z, z], [z, z], None)
    assert out.loss.item() == pytest.approx(1.0629, abs=1e-4)
    assert out.metrics["step_train_acc1"].item() == 100.0


def test_nt_xent_invariant_to_joint_permutation_and_scaling():
    z1, z2 = unit(6, 8), unit(6, 8, seed=3)
    criterion = build_criterion(SimCLRParams())
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    base = criterion([z1, z2], [z1, z2], None).loss
    permuted = criterion([z1[perm], z2[perm]], [z1[perm], z2[perm]], None).loss
    assert permuted.item() == pytest.approx(base.item(), abs=1e-12)


# --- MoCo queue ----------------------------------------------------------------------------------------------------


def test_moco_criterion_equals_reference_info_nce_against_queue():
    params = ModelParams(K=32, batch_size=8)
    q, k, queue = (
        unit(8, 16),
        unit(8, 16, seed=1),
        unit(
            16,
            32,
            seed=2,
        ),
    )
    queue = F.normalize(queue, dim=0)
    out = build_criterion(params)([q, None], [None, k], queue.T[None])  # the memory holds one slot of key rows
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / params.T
    reference = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    assert out.loss.item() == pytest.approx(reference.item(), abs=1e-12)


def test_eqco_preset_with_alpha_equal_to_queue_is_moco():
    q, k, queue = unit(8, 16), unit(8, 16, seed=1), F.normalize(unit(16, 256, seed=2), dim=0)
    memory = queue.T[None]
    eqco = build_criterion(EqCoParams(K=256, eqco_alpha=256, batch_size=8))([q, None], [None, k], memory).loss
    moco = build_criterion(ModelParams(K=256, batch_size=8))([q, None], [None, k], memory).loss
    assert eqco.item() == pytest.approx(moco.item(), abs=1e-12)


def test_batch_negatives_cross_view_only_with_lagging_model():
    """With a lagging model, in-batch negatives are the other view's keys only: B-1 per anchor (MoCo v3 style)."""
    params = ModelParams(use_negative_examples_from_batch=True, use_negative_examples_from_queue=False)
    criterion = build_criterion(params)
    assert isinstance(criterion, ContrastiveCriterion) and not criterion.same_view_negatives
    z = F.normalize(torch.ones(5, 4), dim=1)
    assert criterion([z, None], [None, z], None).loss.item() == pytest.approx(math.log(5), rel=1e-6)


# --- VICReg --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction, branches", [("mean", 1), ("sum", 2)])
def test_vicreg_constant_rows(reduction, branches):
    """Each branch's hinge is 1 - sqrt(eps); the official code averages the two branches, the paper sums them."""
    z = torch.ones(16, 8) * 3.0
    terms = vicreg.vicreg_loss(z, z, 25.0, 25.0, 1.0, 1e-4, variance_reduction=reduction)
    assert terms["loss"].item() == pytest.approx(25 * branches * (1 - math.sqrt(1e-4)), rel=1e-6)
    assert terms["loss_covariance"].item() == 0.0 and terms["loss_invariance"].item() == 0.0


def official_vicreg_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of facebookresearch/vicreg's main_vicreg.py (one process), written out: 25 MSE + 25 (mean of the
    branches' std hinges, each halved) + 1 (sum of the branches' off-diagonal covariance squares / D)."""
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + 1e-4), torch.sqrt(y.var(dim=0) + 1e-4)
    std = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    off = ~torch.eye(d, dtype=torch.bool)
    cov_x, cov_y = (x.T @ x) / (n - 1), (y.T @ y) / (n - 1)
    cov = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
    return 25 * invariance + 25 * std + cov


def test_vicreg_default_is_the_official_code_and_lightly():
    z1, z2 = 0.3 * unit(32, 16), 0.3 * unit(32, 16, seed=1)  # std below 1: the variance hinge is active
    ours = vicreg.vicreg_loss(z1, z2, 25.0, 25.0, 1.0, 1e-4)["loss"]
    assert ours.item() == pytest.approx(official_vicreg_loss(z1, z2).item(), rel=1e-12)
    lightly_loss = pytest.importorskip("lightly.loss")
    assert ours.item() == pytest.approx(lightly_loss.VICRegLoss()(z1, z2).item(), rel=1e-6)


def test_vicreg_whitened_equal_views_is_zero():
    n, d = 64, 8
    a = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal columns orthogonal to the ones vector
    z = u * math.sqrt(n - 1)  # zero mean, unbiased covariance = identity
    assert vicreg.vicreg_loss(z, z, 25.0, 25.0, 1.0, 1e-4)["loss"].item() == pytest.approx(0.0, abs=1e-8)


def test_vicreg_preset_criterion_and_permutation_invariance():
    z1 = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    z2 = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    criterion = build_criterion(VICRegParams())
    out = criterion([z1, None], [None, z2], None)
    assert out.loss.item() == pytest.approx(vicreg.vicreg_loss(z1, z2, 25, 25, 1, 1e-4)["loss"].item(), rel=1e-6)
    assert set(out.metrics) >= {"loss_invariance", "loss_variance", "loss_covariance"}
    perm = torch.randperm(32)
    assert criterion([z1[perm], None], [None, z2[perm]], None).loss.item() == pytest.approx(out.loss.item(), rel=1e-5)


# --- helpers -------------------------------------------------------------------------------------------------------


def test_split_positive_and_accuracy():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8]])
    pos, neg = losses.split_positive(sim, torch.tensor([0, 1]))
    assert pos.tolist() == pytest.approx([0.9, 0.2])
    assert torch.equal(neg, torch.tensor([[0.1, 0.2], [0.3, 0.8]]))
    acc1, acc5 = losses.contrastive_accuracy(pos, neg)
    assert acc1.item() == 50.0 and acc5.item() == 100.0


def test_contrastive_accuracy_matches_rank_definition_with_ties():
    # The positive is top-k when fewer than k negatives are >= it; integer values make ties common.
    generator = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (200,), generator=generator).float()
    neg = torch.randint(0, 6, (200, 9), generator=generator).float()
    rank = (neg >= pos[:, None]).sum(dim=1)
    acc1, acc5 = losses.contrastive_accuracy(pos, neg)
    assert acc1.item() == pytest.approx((rank < 1).float().mean().item() * 100)
    assert acc5.item() == pytest.approx((rank < 5).float().mean().item() * 100)
    assert 0 < acc1.item() < acc5.item() < 100


def test_positive_negative_cosine_matches_brute_force():
    q, k = torch.randn(5, 3), torch.randn(5, 3)
    cos = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T
    pos, neg = losses.positive_negative_cosine(q, k)
    assert pos.item() == pytest.approx(cos.diagonal().mean().item(), abs=1e-6)
    assert neg.item() == pytest.approx(cos[~torch.eye(5, dtype=torch.bool)].mean().item(), abs=1e-6)


def test_view_pairs():
    assert view_pairs(2, 0, symmetric=False) == [(0, 1)]
    assert view_pairs(2, 0, symmetric=True) == [(0, 1), (1, 0)]
    pairs = view_pairs(2, 6, symmetric=True)  # DINO-style multi-crop: 2 x (2 + 6 - 1) = 14 pairs
    assert len(pairs) == 14 and all(t in (0, 1) and s != t for s, t in pairs)


@pytest.mark.parametrize("preset", [BYOLParams, SimCLRParams, VICRegParams])
def test_criteria_compute_in_float32_under_autocast(preset):
    """Mixed precision must not reach the loss: the criterion's matmuls run with autocast off, in float32."""
    z1 = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    z2 = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    params = preset(dim=32)
    views = [F.normalize(z1, dim=1), F.normalize(z2, dim=1)] if params.use_unit_sphere_projection else [z1, z2]
    criterion = build_criterion(params)
    reference = criterion(views, views).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = criterion([v.bfloat16() for v in views], [v.bfloat16() for v in views]).loss
    assert mixed.dtype == torch.float32
    expected = criterion([v.bfloat16().float() for v in views], [v.bfloat16().float() for v in views]).loss
    assert mixed.item() == pytest.approx(expected.item(), rel=1e-6)
    assert reference.dtype == torch.float32


def test_symmetric_criteria_are_unchanged_when_the_views_are_swapped():
    """methods.md 5(d): a symmetrized loss does not depend on which view is called the first."""
    z1, z2 = unit(8, 16), unit(8, 16, seed=1)
    for preset in (BYOLParams, SimCLRParams, VICRegParams):
        criterion = build_criterion(preset(dim=16))
        assert criterion([z1, z2], [z1, z2]).loss.item() == pytest.approx(
            criterion([z2, z1], [z2, z1]).loss.item(), abs=1e-12
        )


def test_nt_xent_ideal_case_b256_and_feature_permutation_invariance():
    """methods.md 2.4: pairs identical, all others orthogonal, B=256, tau=0.2: log(1 + 510 e^{-5}) = 1.4898; the loss
    does not depend on the order of the feature dimensions."""
    z = torch.eye(256, dtype=torch.float64)
    assert build_criterion(SimCLRParams(T=0.2))([z, z], [z, z]).loss.item() == pytest.approx(1.4898, abs=1e-4)
    z1, z2 = unit(6, 8), unit(6, 8, seed=3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    criterion = build_criterion(SimCLRParams())
    assert criterion([z1[:, perm], z2[:, perm]], [z1[:, perm], z2[:, perm]]).loss.item() == pytest.approx(
        criterion([z1, z2], [z1, z2]).loss.item(), abs=1e-12
    )


def test_eqco_with_an_empty_queue_is_zero():
    pos = torch.tensor([0.3, -0.2])
    assert contrastive.eqco_loss(pos, pos.new_zeros(2, 0), temperature=0.2, alpha=65536).item() == 0.0


def test_contrastive_accuracy_without_negatives_is_100():
    acc1, acc5 = losses.contrastive_accuracy(torch.tensor([0.1, -0.5]), torch.zeros(2, 0))
    assert acc1.item() == 100.0 and acc5.item() == 100.0
