"""ModelParams: public field names and defaults, presets, validation errors and warnings."""

import re
import warnings

import attr
import pytest

from selfsup.config import (
    PRESETS,
    BYOLParams,
    EqCoParams,
    MoCoParams,
    ModelParams,
    SimCLRParams,
    VICRegParams,
    make_params,
)
from selfsup.methods.options import canonical_loss_type

# The public field names and defaults of the original design (issue 2); users and checkpoints rely on them.
ORIGINAL_DEFAULTS = dict(
    encoder_arch="resnet18",
    shuffle_batch_norm=False,
    embedding_dim=512,
    dataset_name="stl10",
    batch_size=256,
    K=65536,
    dim=128,
    m=0.996,
    T=0.2,
    eqco_alpha=65536,
    use_eqco_margin=False,
    use_negative_examples_from_batch=False,
    lr=0.5,
    momentum=0.9,
    weight_decay=1e-4,
    max_epochs=320,
    final_lr_schedule_value=0.0,
    transform_s=0.5,
    transform_apply_blur=True,
    use_momentum_schedule=False,
    loss_type="ce",
    use_negative_examples_from_queue=True,
    use_both_augmentations_as_queries=False,
    optimizer_name="sgd",
    lars_warmup_epochs=1,
    lars_eta=1e-3,
    exclude_matching_parameters_from_lars=[],
    loss_constant_factor=1,
    use_vicreg_loss=False,
    use_lagging_model=True,
    use_unit_sphere_projection=True,
    invariance_loss_weight=25.0,
    variance_loss_weight=25.0,
    covariance_loss_weight=1.0,
    variance_loss_epsilon=1e-4,
    projection_mlp_layers=2,
    prediction_mlp_layers=0,
    mlp_hidden_dim=512,
    mlp_normalization=None,
    prediction_mlp_normalization="same",
    use_mlp_weight_standardization=False,
    num_data_workers=4,
    drop_last_batch=True,
    pin_data_memory=True,
    gather_keys_for_queue=False,
    transform_crop_size=None,
    data_path=None,
)


def test_defaults_are_the_original_public_api():
    params = ModelParams()
    for name, value in ORIGINAL_DEFAULTS.items():
        # the original loss_type names are accepted as aliases and become the methods' names
        assert getattr(params, name) == (canonical_loss_type(value) if name == "loss_type" else value), name
    assert ModelParams(loss_type="ce") == params and params.loss_type == "contrastive"


@pytest.mark.parametrize("old, new", [("ce", "contrastive"), ("bce", "binary_contrastive"), ("ip", "byol"),
                                      ("neg_cos", "simsiam"), ("barlow", "barlow_twins"), ("vic", "vicreg")])
def test_older_loss_type_names_load_as_the_methods_names(old, new):
    fields = dict(use_negative_examples_from_queue=False, use_negative_examples_from_batch=True,
                  use_vicreg_loss=new == "vicreg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # suspicious flag combinations are beside the point here
        assert ModelParams(loss_type=old, **fields) == ModelParams(loss_type=new, **fields)
        assert ModelParams(loss_type=old, **fields).loss_type == new


def test_list_default_is_not_shared_and_params_are_frozen():
    a, b = ModelParams(), ModelParams()
    assert a.exclude_matching_parameters_from_lars is not b.exclude_matching_parameters_from_lars
    with pytest.raises(attr.exceptions.FrozenInstanceError):
        a.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_and_accept_overrides(name):
    params = PRESETS[name](batch_size=128, lr=0.1)
    assert params.batch_size == 128 and params.lr == 0.1
    assert ModelParams(**attr.asdict(params)) == params
    assert make_params(attr.asdict(params)) == params


def test_preset_contents():
    byol = BYOLParams()
    assert (byol.prediction_mlp_layers, byol.mlp_normalization, byol.loss_type, byol.optimizer_name) == (
        2,
        "bn",
        "byol",
        "lars",
    )
    assert byol.use_both_augmentations_as_queries and byol.use_momentum_schedule and not byol.uses_queue
    assert byol.exclude_bias_and_norm_from_lars and byol.loss_constant_factor == 2
    simclr = SimCLRParams()
    assert simclr.use_negative_examples_from_batch and not simclr.uses_queue and not simclr.use_lagging_model
    assert simclr.use_both_augmentations_as_queries and simclr.view_pair_reduction == "mean"
    vicreg = VICRegParams()
    assert (
        vicreg.loss_type,
        vicreg.projection_mlp_layers,
        vicreg.mlp_hidden_dim,
        vicreg.dim,
        vicreg.final_lr_schedule_value,
        vicreg.lars_warmup_epochs,
    ) == ("vicreg", 3, 2048, 2048, 0.002, 10)
    assert not vicreg.use_unit_sphere_projection and vicreg.exclude_bias_and_norm_from_lars
    assert EqCoParams().use_eqco_margin and EqCoParams().K == 256
    moco = MoCoParams()
    assert (moco.projection_mlp_layers, moco.T, moco.m) == (1, 0.07, 0.999)


@pytest.mark.parametrize(
    "field",
    [
        "loss_type",
        "optimizer_name",
        "mlp_normalization",
        "prediction_mlp_normalization",
        "dataset_name",
        "encoder_arch",
        "transform_type",
        "view_pair_reduction",
    ],
)
def test_unknown_enum_values_name_the_field_and_allowed_values(field):
    with pytest.raises(ValueError, match=rf"ModelParams\.{field}: got 'bogus'; allowed values are .+"):
        ModelParams(**{field: "bogus"})


def test_close_enum_value_gets_a_suggestion():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        ModelParams(encoder_arch="resnet-18")


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(use_negative_examples_from_queue=False), "loss_type: 'contrastive' needs negatives"),
        (dict(loss_type="bce", use_negative_examples_from_queue=False), "loss_type: 'binary_contrastive' needs "),
        (dict(K=1000), "K: memory length 1000 must be a multiple of batch_size 256"),
        (dict(K=0), "K: got 0; a memory needs at least one batch"),
        (dict(use_vicreg_loss=True), "use_vicreg_loss: is True but loss_type is 'contrastive'"),
        (
            dict(loss_type="vic", use_negative_examples_from_queue=False),
            "use_vicreg_loss: is False but loss_type is 'vicreg'",
        ),
        (dict(batch_size=0), r"batch_size: got 0; expected a value in \[1, inf\]"),
        (dict(dim=-3), "dim: got -3"),
        (dict(T=0.0), r"T: got 0.0; expected a value in \(0, inf\]"),
        (dict(T=-1.0), "T: got -1.0"),
        (dict(m=1.5), r"m: got 1.5; expected a value in \[0, 1\]"),
        (dict(m=-0.1), "m: got -0.1"),
        (dict(lr=0.0), "lr: got 0.0"),
        (dict(weight_decay=-1e-4), "weight_decay: got -0.0001"),
        (dict(use_eqco_margin=True, loss_type="ip"), "use_eqco_margin: the EqCo margin is defined for "
                                                     "loss_type='contrastive'"),
        (dict(projection_mlp_layers=0), r"dim: projection_mlp_layers=0 makes the projection the identity"),
        (dict(mlp_normalization="gn", mlp_hidden_dim=100), "mlp_normalization: 'gn' uses 32 groups"),
        (dict(global_crop_scale=(0.5, 0.2)), "global_crop_scale: got"),
        (dict(transform_crop_size=0), "transform_crop_size: got 0"),
        (dict(loss_constant_factor=0), "loss_constant_factor: got 0"),
    ],
)
def test_impossible_configurations_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        ModelParams(**overrides)


def test_unknown_field_is_never_silently_dropped():
    with pytest.raises(
        ValueError, match=re.escape("ModelParams has no field 'btach_size' (did you mean 'batch_size'?)")
    ):
        make_params(ModelParams(), btach_size=3)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (
            dict(use_lagging_model=False, use_momentum_schedule=True, use_negative_examples_from_batch=True),
            "use_momentum_schedule has no effect",
        ),
        (
            dict(gather_keys_for_queue=True, loss_type="ip", use_negative_examples_from_queue=False),
            "gather_keys_for_queue",
        ),
        (dict(loss_type="ip", use_negative_examples_from_queue=False, use_lagging_model=False), "collapses"),
        (dict(use_unit_sphere_projection=False), "unbounded"),
        (dict(loss_type="nnclr", use_lagging_model=False, use_target_stop_gradient=True),
         "'nnclr' always contrasts each anchor with the other samples of the batch and with no queue"),
        (dict(loss_type="supcon", use_lagging_model=False, use_negative_examples_from_queue=False),
         "use_negative_examples_from_batch=False and use_negative_examples_from_queue=True are ignored"),
    ],
)
def test_suspicious_configurations_warn(overrides, match):
    with pytest.warns(UserWarning, match=match):
        ModelParams(**overrides)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_not_suspicious(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PRESETS[name]()


def test_short_run_overrides_scale_schedules_to_the_run():
    from selfsup.config import DINOParams, SimCLRParams, short_run_overrides

    dino = DINOParams(max_epochs=4)
    assert short_run_overrides(dino) == dict(
        lr=0.3,  # LARS: unchanged
        lars_warmup_epochs=pytest.approx(0.4),
        teacher_temperature_warmup_epochs=1,
        freeze_prototypes_epochs=0,
        m=0.99,
    )
    moco = short_run_overrides(MoCoParams(max_epochs=20))
    assert (moco["m"], moco["lr"]) == (0.99, pytest.approx(0.05))  # MoCo v1's 0.999; SGD: a tenth of 0.5
    simclr = short_run_overrides(SimCLRParams(max_epochs=4))
    assert simclr == dict(lr=pytest.approx(0.05))  # no EMA to cap, no warmup with SGD
    assert short_run_overrides(DINOParams(max_epochs=100)) == {}  # the papers' own lengths are left alone
    attr.evolve(dino, **short_run_overrides(dino))  # the result validates
