"""timm Vision Transformers as encoders, AdamW with its weight-decay rules and schedule, gradient clipping, and MAE:
masking, the decoder's token placement, the loss's closed forms, the step and its reconstruction pictures."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import TINY, cpu_trainer, reloaded, tiny

from selfsup import SelfSupervisedMethod, distributed
from selfsup.config import DINOParams, MAETinyParams, ModelParams
from selfsup.distributed import collectives
from selfsup.methods.mae import mae_loss, random_masking
from selfsup.methods.steps import Progress
from selfsup.nn.vit import (
    patchify,
    place_tokens,
    select_tokens,
    sincos_position_embedding,
    timm_encoder,
    unpatchify,
)
from selfsup.optim.schedules import CosineValue, LrAndWeightDecaySchedule

VIT = dict(encoder_arch="timm:vit_tiny_patch16_224", patch_size=4, embedding_dim=192)


def mae(**overrides: object) -> ModelParams:
    return tiny(MAETinyParams, **overrides)


# --- the encoder ----------------------------------------------------------------------------------------------------
def test_a_timm_vit_named_by_its_timm_name_runs_on_32_px_images_without_more_flags():
    model = SelfSupervisedMethod(ModelParams(**{**TINY, "encoder_arch": "timm:vit_tiny_patch16_224",
                                                "embedding_dim": 192}))
    assert model.model.patch_embed.grid_size == (2, 2)  # built for the 32-px crop, not for 224 px
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_vit_fields_build_the_model_asked_for():
    vit = timm_encoder("timm:vit_tiny_patch16_224", 32, patch_size=4, global_pool="avg", drop_path_rate=0.1)
    assert vit.patch_embed.grid_size == (8, 8) and vit.num_prefix_tokens == 0 and vit.cls_token is None
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    # timm's fused attention: scaled_dot_product_attention, so GPUs get flash attention
    assert all(block.attn.fused_attn for block in vit.blocks)
    token = timm_encoder("timm:vit_tiny_patch16_224", 32, patch_size=4, global_pool="token")
    assert token.num_prefix_tokens == 1
    x = torch.randn(3, 3, 32, 32)
    assert vit(x).shape == token(x).shape == (3, 192)


def test_sincos_position_embeddings_are_the_closed_form_and_are_not_trained():
    table = sincos_position_embedding(8, 3, 4)  # 2 frequencies per axis: 1 and 1/100
    row, col = 2, 3
    expected = [math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100),
                math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100)]
    assert torch.allclose(table[row * 4 + col], torch.tensor(expected), atol=1e-6)
    vit = timm_encoder("timm:vit_tiny_patch16_224", 32, patch_size=4, fixed_sincos_pos_embed=True)
    assert not vit.pos_embed.requires_grad
    assert torch.equal(vit.pos_embed[0, 0], torch.zeros(192))  # the class token's position
    assert torch.allclose(vit.pos_embed[0, 1:], sincos_position_embedding(192, 8, 8))


def test_a_frozen_patch_projection_stays_as_initialised_through_training():
    params = tiny(DINOParams, **VIT, freeze_patch_embed=True, optimizer_name="adamw", lr=1e-2, local_crop_size=16)
    model = SelfSupervisedMethod(params)
    before = model.model.patch_embed.proj.weight.detach().clone()
    block = model.model.blocks[0].attn.qkv.weight.detach().clone()
    cpu_trainer(limit_train_batches=2, limit_val_batches=0).fit(model)
    assert torch.equal(model.model.patch_embed.proj.weight, before)
    assert not torch.equal(model.model.blocks[0].attn.qkv.weight, block)  # the rest of the ViT trains


def test_moco_v3s_frozen_patch_projection_is_its_uniform_initialisation_without_bias():
    vit = timm_encoder("timm:vit_tiny_patch16_224", 32, patch_size=4, freeze_patch_embed=True, num_heads=6)
    weight = vit.patch_embed.proj.weight
    bound = math.sqrt(6 / (3 * 4 * 4 + 192))
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
    assert torch.equal(vit.patch_embed.proj.bias, torch.zeros(192))
    assert vit.blocks[0].attn.num_heads == 6  # MoCo v3's ViT-S has 12 heads where timm's has 6


def test_the_ema_teacher_has_no_stochastic_depth_where_the_student_has():
    model = SelfSupervisedMethod(tiny(DINOParams, **VIT, drop_path_rate=0.2, local_crop_size=16))
    student = [m.drop_prob for m in model.model.modules() if hasattr(m, "drop_prob")]
    teacher = [m.drop_prob for m in model.step.target.encoder.modules() if hasattr(m, "drop_prob")]
    assert max(student) == pytest.approx(0.2) and teacher == [0.0] * len(student)


@pytest.mark.parametrize("overrides, field", [
    (dict(encoder_arch="timm:vit_tiny_patch16_22"), "encoder_arch"),
    (dict(encoder_arch="resnet181"), "encoder_arch"),
    (dict(encoder_arch="resnet18", patch_size=4), "patch_size"),
    (dict(encoder_arch="resnet18", global_pool="avg"), "global_pool"),
    (dict(encoder_arch="resnet18", drop_path_rate=0.1), "drop_path_rate"),
    (dict(VIT, use_cifar_stem=True), "use_cifar_stem"),
    (dict(loss_type="mae", num_global_crops=1), "encoder_arch"),
    (dict(VIT, loss_type="mae", num_global_crops=1, mask_ratio=1.0), "mask_ratio"),
    (dict(VIT, loss_type="mae", num_global_crops=1, mask_ratio=0.0), "mask_ratio"),
    (dict(VIT, loss_type="mae", num_global_crops=1, encoder_layer="blocks.3"), "encoder_layer"),
    (dict(VIT, loss_type="mae", num_global_crops=1, mae_decoder_width=30, mae_decoder_heads=4), "mae_decoder_width"),
    (dict(adamw_betas=(0.9, 0.95)), "adamw_betas"),
    (dict(optimizer_name="adamw", momentum=0.8), "momentum"),
    (dict(optimizer_name="adamw", adamw_betas=(0.9, 1.0)), "adamw_betas"),
    (dict(weight_decay=0.0, final_weight_decay=0.4), "final_weight_decay"),
    (dict(VIT, loss_type="mae", num_global_crops=1, dataset_name="synthetic", encoder_image_size=64),
     "encoder_image_size"),
    (dict(encoder_arch="resnet18", num_heads=4), "num_heads"),
])
def test_bad_vit_and_adamw_settings_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"ModelParams.{field}"):
        ModelParams(**overrides)


def test_a_patch_size_that_does_not_tile_the_images_is_refused_before_training():
    with pytest.raises(ValueError, match="ModelParams.patch_size: 5-px patches do not tile 32-px images"):
        SelfSupervisedMethod(ModelParams(**{**TINY, **VIT, "patch_size": 5}))
    with pytest.raises(ValueError, match="ModelParams.local_crop_size: 14-px views do not split into the ViT's 4-px"):
        SelfSupervisedMethod(tiny(DINOParams, **VIT))  # 3/7 of 32 px


# --- AdamW ----------------------------------------------------------------------------------------------------------
def test_adamw_decays_weights_only_not_biases_norms_position_embeddings_or_tokens():
    model = SelfSupervisedMethod(mae(weight_decay=0.05))
    trainer = cpu_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(model)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    for name in ("model.cls_token", "step.decoder.mask_token", "model.blocks.0.norm1.weight", "model.norm.bias",
                 "model.blocks.0.attn.qkv.bias", "model.patch_embed.proj.bias"):
        assert decay_of[id(names[name])] == 0, name
    for name in ("model.blocks.0.attn.qkv.weight", "model.patch_embed.proj.weight", "step.decoder.predict.weight"):
        assert decay_of[id(names[name])] > 0, name
    assert "model.pos_embed" not in decay_of  # fixed sine-cosine: not trained at all
    learned = SelfSupervisedMethod(mae(fixed_sincos_pos_embed=False))
    trainer = cpu_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(learned)
    excluded = [p for g in trainer.optimizers[0].param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is learned.model.pos_embed for p in excluded)


def test_weight_decay_follows_a_cosine_from_start_to_end_and_resumes():
    assert [CosineValue(0.04, 0.4, 10)(k) for k in (0, 5, 10, 20)] == pytest.approx([0.04, 0.22, 0.4, 0.4])
    parameter = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([{"params": [parameter], "weight_decay": 0.04},
                                   {"params": [torch.nn.Parameter(torch.ones(1))], "weight_decay": 0.0}], lr=1.0)
    schedule = LrAndWeightDecaySchedule(optimizer, [lambda k: 1.0, lambda k: 1.0], CosineValue(0.04, 0.4, 10))
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.04)
    for _ in range(5):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.22)
    assert optimizer.param_groups[1]["weight_decay"] == 0  # excluded groups stay excluded
    state = schedule.state_dict()
    assert "weight_decay" not in state
    again = torch.optim.AdamW([{"params": [parameter], "weight_decay": 0.04},
                               {"params": [torch.nn.Parameter(torch.ones(1))], "weight_decay": 0.0}], lr=1.0)
    resumed = LrAndWeightDecaySchedule(again, [lambda k: 1.0, lambda k: 1.0], CosineValue(0.04, 0.4, 10))
    resumed.load_state_dict(state)
    resumed.step()
    assert again.param_groups[0]["weight_decay"] == pytest.approx(CosineValue(0.04, 0.4, 10)(6))


def test_gradient_clipping_uses_the_params_unless_the_trainer_sets_its_own(monkeypatch):
    model = SelfSupervisedMethod(mae(gradient_clip_norm=3.0))
    calls = []
    monkeypatch.setattr(model, "clip_gradients", lambda optimizer, value, algorithm: calls.append((value, algorithm)))
    model.configure_gradient_clipping(None)  # type: ignore[arg-type]
    model.configure_gradient_clipping(None, 1.0, "value")  # type: ignore[arg-type]
    assert calls == [(3.0, "norm"), (1.0, "value")]


def test_clipping_bounds_the_global_gradient_norm_in_a_real_step():
    norms = []

    class Record(torch.optim.AdamW):
        def step(self, closure=None):  # type: ignore[override]
            loss = closure()
            norms.append(torch.linalg.vector_norm(torch.stack([
                p.grad.norm() for g in self.param_groups for p in g["params"] if p.grad is not None])))
            return super().step(lambda: loss)

    model = SelfSupervisedMethod(mae(gradient_clip_norm=1e-3))
    original = model.configure_optimizers

    def configure():  # the same groups and schedule, recorded
        config = original()
        optimizer = config["optimizer"]
        config["optimizer"] = Record(optimizer.param_groups, lr=optimizer.defaults["lr"],
                                     betas=optimizer.defaults["betas"])
        config["lr_scheduler"]["scheduler"].optimizer = config["optimizer"]
        return config

    model.configure_optimizers = configure  # type: ignore[method-assign]
    cpu_trainer(limit_train_batches=2, limit_val_batches=0).fit(model)
    assert len(norms) == 2 and all(float(n) <= 1e-3 * (1 + 1e-4) for n in norms)


# --- MAE ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_patches, ratio", [(64, 0.75), (49, 0.75), (196, 0.9), (10, 0.33)])
def test_masking_keeps_round_n_times_one_minus_ratio_distinct_patches_per_image(num_patches, ratio):
    keep, mask = random_masking(torch.rand(5, num_patches), ratio)
    kept = round(num_patches * (1 - ratio))
    assert keep.shape == (5, kept)
    assert all(len(set(row.tolist())) == kept for row in keep)
    assert torch.equal((~mask).sum(dim=1), torch.full((5,), kept))
    assert not mask.gather(1, keep).any()  # exactly the kept patches are visible


def test_the_decoder_puts_every_visible_token_back_in_its_place():
    tokens = torch.arange(64.0)[None, :, None].expand(3, 64, 4)  # token i holds the value i
    keep, mask = random_masking(torch.rand(3, 64), 0.75)
    filler = torch.full((4,), -1.0)
    placed = place_tokens(select_tokens(tokens, keep), keep, filler, 64)
    assert torch.equal(placed[~mask], tokens[~mask])  # the identity at every visible position
    assert torch.equal(placed[mask], filler.expand(int(mask.sum()), 4))


def test_patchify_is_inverted_by_unpatchify_and_puts_a_patch_in_a_row():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(unpatchify(patches, 4, (2, 3)), images)
    assert torch.equal(patches[1, 4].reshape(4, 4, 3), images[1, :, 4:8, 4:8].permute(1, 2, 0))  # row 1, column 1


def test_patchify_equals_lightlys():
    utils = pytest.importorskip("lightly.models.utils")
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.equal(patchify(images, 4), utils.patchify(images, 4))


def test_mae_loss_without_pixel_normalization_equals_lightlys_mse_on_its_masked_patches():
    utils = pytest.importorskip("lightly.models.utils")
    torch.manual_seed(0)
    predictions, patches = torch.randn(4, 16, 12, dtype=torch.float64), torch.randn(4, 16, 12, dtype=torch.float64)
    _, hidden = utils.random_token_mask((4, 17), mask_ratio=0.75)  # lightly counts the class token as position 0
    theirs = torch.nn.functional.mse_loss(utils.get_at_index(predictions, hidden - 1),
                                          utils.get_at_index(patches, hidden - 1))
    mask = torch.zeros(4, 16, dtype=torch.bool).scatter(1, hidden - 1, True)
    assert abs(mae_loss(predictions, patches, mask, norm_pix_loss=False).item() - theirs.item()) < 1e-12


def test_mae_loss_closed_forms():
    targets = torch.randn(2, 6, 12, dtype=torch.float64)
    mask = torch.tensor([[True, False] * 3, [False, True] * 3])
    assert mae_loss(targets, targets, mask, norm_pix_loss=False) == 0
    # normalized targets have mean 0 and unbiased variance 1 per patch (up to the +1e-6): zero costs (K - 1) / K
    assert mae_loss(torch.zeros_like(targets), targets, mask, True).item() == pytest.approx(11 / 12, abs=1e-5)
    # a patch of constant value normalizes to zeros
    constant = torch.full((1, 2, 12), 7.0, dtype=torch.float64)
    hidden = torch.tensor([[True, True]])
    assert mae_loss(torch.zeros_like(constant), constant, hidden, True) == 0
    assert mae_loss(torch.ones_like(constant), constant, hidden, True).item() == pytest.approx(1.0)
    # the visible patches do not count: changing their predictions changes nothing
    changed = targets.clone()
    changed[~mask] += 5
    assert mae_loss(changed, targets, mask, False) == 0


def test_masks_depend_on_seed_and_step_only_and_are_the_same_for_any_number_of_processes(monkeypatch):
    model = SelfSupervisedMethod(mae())
    images = torch.randn(8, 3, 32, 32)
    keep, mask = model.step.masking(images, step=3)
    assert torch.equal(model.step.masking(images, step=3)[1], mask)
    assert not torch.equal(model.step.masking(images, step=4)[1], mask)
    for module in (collectives, distributed):
        monkeypatch.setattr(module, "world_size", lambda: 2)
    halves = []
    for rank in (0, 1):
        for module in (collectives, distributed):
            monkeypatch.setattr(module, "rank", lambda rank=rank: rank)
        halves.append(model.step.masking(images[rank::2], step=3)[1])
    assert torch.equal(halves[0], mask[0::2]) and torch.equal(halves[1], mask[1::2])  # a sampler deals interleaved


def test_a_fixed_batch_loss_falls_under_adamw():
    torch.manual_seed(0)
    model = SelfSupervisedMethod(mae(lr=1e-3, weight_decay=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 32, 32)
    losses = []
    for _ in range(20):
        out = model.step(model.model, [images], torch.zeros(8), Progress(0, 1))  # the same masks every step
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.85 * losses[0] and losses[-1] == min(losses)


def test_reconstruction_pictures_show_the_visible_patches_unchanged():
    model = SelfSupervisedMethod(mae(norm_pix_loss=False)).eval()
    images = torch.randn(4, 3, 32, 32)
    pictures = model.step.pictures(model.model, images)
    assert set(pictures) == {"image", "masked", "reconstruction"}
    assert all(p.shape == images.shape for p in pictures.values())
    visible = pictures["masked"] != 0
    assert torch.equal(pictures["reconstruction"][visible], images[visible])
    assert 0.2 < visible.float().mean() < 0.3  # a quarter of the patches shown


def test_mae_trains_and_its_checkpoint_round_trips_through_the_trainer(tmp_path):
    trainer = cpu_trainer(limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(SelfSupervisedMethod(mae()))
    reloaded(trainer, tmp_path / "mae.ckpt")


# --- the command line -----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("preset, small", [
    ("mae_tiny", ["--mae_decoder_width", "32", "--mae_decoder_depth", "1", "--mae_decoder_heads", "2"]),
    ("ijepa_tiny", ["--ijepa_predictor_width", "32", "--ijepa_predictor_depth", "1", "--ijepa_predictor_heads", "2"]),
])
def test_the_masked_presets_train_checkpoint_resume_and_probe_from_the_command_line(preset, small, tmp_path):
    from selfsup.cli import linear, train

    argv = ["--preset", preset, "--dataset_name", "synthetic", "--synthetic_train_size", "32",
            "--synthetic_val_size", "32", "--batch_size", "8", "--patch_size", "4", "--num_data_workers", "0",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--embedding_plot", "none",
            "--root_dir", str(tmp_path / "run"), *small]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train.main([*argv, "--max_epochs", "1"])
        resumed = train.main([*argv, "--max_epochs", "2", "--resume", first])  # from the end of epoch 1
        assert torch.load(resumed, weights_only=False)["global_step"] == 8  # 4 steps an epoch
        results = linear.main(["--checkpoint", resumed, "--root_dir", str(tmp_path / "probe"), "--max_epochs", "1",
                               "--batch_size", "8", "--num_data_workers", "0", "--trainer.accelerator", "cpu",
                               "--trainer.enable_progress_bar", "false"])
    assert 0 <= results["valid_acc1"] <= 100 and 0 <= results["knn_acc"] <= 100
