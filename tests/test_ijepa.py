"""I-JEPA (selfsup/methods/ijepa.py): the multi-block masks (the paper's ranges, disjoint context and targets, the
same for any number of processes), the loss's closed forms, what the context encoder, the predictor and the EMA
target see, learning on a fixed batch, and a run through the Trainer with a checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import cpu_trainer, reloaded, tiny

from selfsup import SelfSupervisedMethod, distributed
from selfsup.config import IJEPAParams, IJEPATinyParams, ModelParams
from selfsup.distributed import collectives
from selfsup.methods.ijepa import MIN_KEEP, MultiBlock, block_size, ijepa_loss
from selfsup.methods.steps import Progress

PAPER = MultiBlock(num_targets=4, target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0))
VIT_B_GRID = (14, 14)  # 224-px images in 16-px patches


def ijepa(**overrides: object) -> ModelParams:
    return tiny(IJEPATinyParams, **overrides)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rows_and_cols(index: torch.Tensor, grid_w: int) -> tuple:
    return index.div(grid_w, rounding_mode="floor"), index % grid_w


# --- masks ----------------------------------------------------------------------------------------------------------
def test_block_sizes_follow_the_papers_scale_and_aspect_ranges():
    """On a 64 x 64 grid rounding to whole patches moves the area and the aspect ratio by under 3%."""
    grid, tolerance = (64, 64), 0.03
    for seed in range(200):
        height, width = block_size(grid, PAPER.target_scale, PAPER.target_aspect, generator(seed))
        assert 0.15 * (1 - tolerance) <= height * width / 4096 <= 0.2 * (1 + tolerance)
        assert 0.75 * (1 - tolerance) <= height / width <= 1.5 * (1 + tolerance)
        side, other = block_size(grid, PAPER.context_scale, (1.0, 1.0), generator(seed))
        assert side == other and 0.85 * (1 - tolerance) <= side * side / 4096 <= 1.0


def test_target_blocks_are_whole_rectangles_of_one_size_per_batch():
    for seed in range(20):
        _, targets = PAPER(16, VIT_B_GRID, generator(seed))
        rows, cols = rows_and_cols(targets, VIT_B_GRID[1])
        heights = rows.amax(-1) - rows.amin(-1) + 1
        widths = cols.amax(-1) - cols.amin(-1) + 1
        assert torch.equal(heights * widths, torch.full_like(heights, targets.shape[-1]))  # no hole in a block
        assert len(set(zip(heights.flatten().tolist(), widths.flatten().tolist()))) == 1  # one size per batch
        assert 0.75 / 1.25 <= heights[0, 0] / widths[0, 0] <= 1.5 * 1.25  # rounding to 5-7 patches moves it


def test_the_context_excludes_every_target_patch_and_rows_line_up():
    for seed in range(20):
        context, targets = PAPER(16, VIT_B_GRID, generator(seed))
        assert context.shape[0] == 16 and context.shape[1] > MIN_KEEP
        for image in range(16):
            kept = context[image].tolist()
            assert kept == sorted(set(kept))  # distinct patches, in raster order
            assert not set(kept) & set(targets[image].flatten().tolist())


def test_an_image_whose_targets_cover_its_context_is_drawn_again():
    """Four 3 x 3 targets on a 6 x 6 grid often cover most of the 5 x 5 context; every image ends up with more than
    MIN_KEEP context patches all the same."""
    crowded = MultiBlock(4, (0.25, 0.25), (1.0, 1.0), (1.0, 1.0))
    for seed in range(20):
        context, targets = crowded(32, (6, 6), generator(seed))
        assert context.shape[1] > MIN_KEEP
        assert all(not set(c.tolist()) & set(t.flatten().tolist()) for c, t in zip(context, targets))


def test_a_context_block_too_small_to_ever_keep_enough_patches_names_the_field():
    with pytest.raises(ValueError, match="ModelParams.ijepa_context_scale"):
        MultiBlock(4, (0.15, 0.2), (0.75, 1.5), (0.1, 0.1))(4, (4, 4), generator(0))


def test_masks_depend_on_seed_and_step_only_and_are_the_same_for_any_number_of_processes(monkeypatch):
    model = SelfSupervisedMethod(ijepa())
    images = torch.randn(8, 3, 32, 32)
    context, targets = model.step.masking(images, step=3)
    again = model.step.masking(images, step=3)
    assert torch.equal(again[0], context) and torch.equal(again[1], targets)
    later = model.step.masking(images, step=4)
    assert not (torch.equal(later[1], targets) and torch.equal(later[0], context))
    for module in (collectives, distributed):
        monkeypatch.setattr(module, "world_size", lambda: 2)
    dealt = []
    for rank in (0, 1):  # each process's rows, wherever the library deals them, get the one-process masks
        for module in (collectives, distributed):
            monkeypatch.setattr(module, "rank", lambda rank=rank: rank)
        rows = distributed.this_process_rows(torch.arange(8))
        share = model.step.masking(images[rows], step=3)
        assert torch.equal(share[0], context[rows]) and torch.equal(share[1], targets[rows])
        dealt += rows.tolist()
    assert sorted(dealt) == list(range(8))


# --- loss -----------------------------------------------------------------------------------------------------------
def test_ijepa_loss_closed_forms():
    targets = torch.randn(2, 4, 6, 8, dtype=torch.float64)
    assert ijepa_loss(targets, targets) == 0
    for c in (0.5, -3.0):
        assert ijepa_loss(targets + c, targets).item() == pytest.approx(c * c, rel=1e-12)
    # one feature of one token off by 2: 4 over the 2 * 4 * 6 * 8 entries
    moved = targets.clone()
    moved[1, 2, 3, 4] += 2
    assert ijepa_loss(moved, targets).item() == pytest.approx(4 / (2 * 4 * 6 * 8), rel=1e-12)


# --- the networks ---------------------------------------------------------------------------------------------------
def test_the_context_encoder_sees_only_the_context_patches():
    """Pixels of patches outside an image's context change nothing the predictor receives."""
    model = SelfSupervisedMethod(ijepa())
    images = torch.randn(2, 3, 32, 32)
    context, _ = model.step.masking(images, step=0)
    (grid_h, grid_w), patch = model.step.grid, 32 // model.step.grid[1]
    changed = images.clone()
    for position in set(range(grid_h * grid_w)) - set(context[0].tolist()):
        row, col = divmod(position, grid_w)
        changed[0, :, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch] += 10
    with torch.no_grad():
        before = model.step.encode_context(model.model, images, context)
        after = model.step.encode_context(model.model, changed, context)
    assert torch.allclose(before, after, atol=1e-5)


def test_each_target_block_is_predicted_from_the_context_and_its_own_mask_tokens_only():
    """Batching the K target blocks as B * K rows equals running the predictor once per block (official code)."""
    model = SelfSupervisedMethod(ijepa())
    predictor = model.step.predictor
    context, targets = model.step.masking(torch.randn(3, 3, 32, 32), step=0)
    tokens = torch.randn(3, context.shape[1], 192)
    with torch.no_grad():
        together = predictor(tokens, context, targets)
        alone = [predictor(tokens, context, targets[:, k:k + 1]) for k in range(targets.shape[1])]
    assert together.shape == (*targets.shape, 192)
    assert torch.allclose(together, torch.cat(alone, dim=1), atol=1e-5)


def test_targets_are_the_ema_encoders_layer_normed_patch_tokens_without_gradient():
    model = SelfSupervisedMethod(ijepa())
    images = torch.randn(2, 3, 32, 32)
    _, targets = model.step.masking(images, step=0)
    representations = model.step.target_representations(images, targets)
    tokens = F.layer_norm(model.step.target_encoder.forward_features(images), (192,))  # no class token: 16 patches
    expected = torch.stack([tokens[b, targets[b]] for b in range(2)])
    assert not representations.requires_grad
    assert torch.allclose(representations, expected, atol=1e-5)
    assert torch.allclose(representations.mean(-1), torch.zeros(()), atol=1e-5)


def test_the_representation_is_the_mean_of_the_patch_tokens_and_no_class_token_exists():
    model = SelfSupervisedMethod(ijepa()).eval()
    images = torch.randn(2, 3, 32, 32)
    assert model.model.num_prefix_tokens == 0 and model.model.cls_token is None
    with torch.no_grad():
        assert torch.allclose(model(images), model.model.forward_features(images).mean(1), atol=1e-5)


# --- training -------------------------------------------------------------------------------------------------------
def test_a_fixed_batch_loss_falls_under_adamw():
    torch.manual_seed(0)
    model = SelfSupervisedMethod(ijepa())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images = torch.randn(8, 3, 32, 32)
    losses = []
    for _ in range(20):
        out = model.step(model.model, [images], torch.zeros(8), Progress(0, 1))  # same masks, fixed target
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_the_target_gets_no_gradient_and_follows_the_ema_rule():
    model = SelfSupervisedMethod(ijepa())
    target = model.step.target_encoder
    assert all(not p.requires_grad for p in target.parameters())
    assert all(m is not model.model for m in model.step.modules())  # the online encoder is the module's only
    model.step(model.model, [torch.randn(4, 3, 32, 32)], torch.zeros(4), Progress(0, 10)).loss.backward()
    assert all(p.grad is None for p in target.parameters())
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn_like(p))  # as an optimizer step would move it
    before = [p.detach().clone() for p in target.parameters()]
    model.step.after_optimizer_step(model.model, Progress(5, 10))
    m = 1 - (1 - model.params.m) * (1 + math.cos(math.pi / 2)) / 2  # halfway along the cosine from m to 1
    for old, new, online in zip(before, target.parameters(), model.model.parameters()):
        assert torch.allclose(new, m * old + (1 - m) * online, atol=1e-6)


def test_ijepa_trains_through_the_trainer_and_its_checkpoint_round_trips(tmp_path):
    model = SelfSupervisedMethod(ijepa())
    initial_target = [p.detach().clone() for p in model.step.target_encoder.parameters()]
    trainer = cpu_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model)
    decay_of = {id(p): group["weight_decay"] for group in trainer.optimizers[0].param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert decay_of[id(names["step.predictor.mask_token"])] == 0
    assert decay_of[id(names["step.predictor.embed.weight"])] > 0
    assert not any(name.startswith("step.target_encoder.") and id(p) in decay_of for name, p in names.items())
    assert any(not torch.equal(a, b) for a, b in zip(initial_target, model.step.target_encoder.parameters()))
    reloaded(trainer, tmp_path / "ijepa.ckpt")


# --- settings -------------------------------------------------------------------------------------------------------
def test_the_presets_are_the_papers_recipe_on_vit_b_and_vit_tiny():
    base, small = IJEPAParams(), IJEPATinyParams()
    assert (base.encoder_arch, base.embedding_dim, base.lr, base.max_epochs, small.max_epochs) == (
        "timm:vit_base_patch16_224", 768, pytest.approx(1e-3 * 256 / 2048), 600, 300)
    assert base.final_lr_schedule_value == 1e-6 and base.lars_warmup_epochs == 40
    assert (base.weight_decay, base.final_weight_decay, base.m, base.global_crop_scale) == (0.04, 0.4, 0.996,
                                                                                            (0.3, 1.0))
    assert (small.patch_size, small.ijepa_predictor_width, small.global_pool) == (4, 96, "avg")


def test_ijepa_on_a_resnet_names_encoder_arch():
    with pytest.raises(ValueError, match="ModelParams.encoder_arch: loss_type='ijepa' works on the patch tokens"):
        ModelParams(loss_type="ijepa", encoder_arch="resnet18")


@pytest.mark.parametrize("overrides, field", [
    (dict(ijepa_target_scale=(0.2, 0.1)), "ijepa_target_scale"),
    (dict(ijepa_context_scale=(0.85, 1.2)), "ijepa_context_scale"),
    (dict(ijepa_target_aspect=(0.0, 1.5)), "ijepa_target_aspect"),
    (dict(ijepa_target_aspect=(0.75,)), "ijepa_target_aspect"),
    (dict(ijepa_predictor_width=30, ijepa_predictor_heads=3), "ijepa_predictor_width"),
    (dict(ijepa_num_targets=0), "ijepa_num_targets"),
])
def test_bad_ijepa_settings_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"ModelParams.{field}"):
        IJEPATinyParams(**overrides)


def test_a_class_token_representation_is_suspicious():
    with pytest.warns(UserWarning, match="global_pool='avg'"):
        IJEPATinyParams(global_pool="token")
