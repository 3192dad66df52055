"""Stateful helpers step by step: memory (queue), EMA, schedules, parameter groups."""

import math

import pytest
import torch
from torch import nn

from selfsup.config import BYOLParams
from selfsup.eval import probes
from selfsup.nn import heads
from selfsup.nn.memory import Memory, check_length
from selfsup.nn.target import MomentumSchedule, MomentumTarget, ema_update_
from selfsup.optim.groups import parameter_groups
from selfsup.optim.schedules import WarmupCosineSchedule
from selfsup.train.module import SelfSupervisedMethod


def _rows(*values: float, dim: int = 3) -> torch.Tensor:
    return torch.tensor(values)[:, None].expand(-1, dim)


def test_memory_writes_and_wraps_around_by_exact_rows():
    memory = Memory(dim=3, size=6, views=[1], field="K")
    batches = [_rows(i, i + 0.1) for i in range(1, 5)]
    for batch in batches[:3]:
        memory.write([None, batch])  # only view 1 enters the memory
    assert memory.ptr.item() == 0  # 3 batches of 2 fill 6 rows exactly
    for row, value in enumerate([1.0, 1.1, 2.0, 2.1, 3.0, 3.1]):
        assert torch.equal(memory.rows[0, row], torch.full((3,), value))
    memory.write([None, batches[3]])  # wraps: overwrites the oldest two rows
    assert memory.ptr.item() == 2
    assert memory.rows[0, :, 0].tolist() == pytest.approx([4.0, 4.1, 2.0, 2.1, 3.0, 3.1])


def test_memory_wraps_within_a_batch():
    memory = Memory(dim=1, size=4, views=[0], field="K")
    memory.write([_rows(1, 2, 3, dim=1)])
    memory.write([_rows(4, 5, 6, dim=1)])
    assert memory.rows[0, :, 0].tolist() == [5.0, 6.0, 3.0, 4.0] and memory.ptr.item() == 2


def test_memory_reads_only_written_rows_and_survives_a_state_dict_round_trip():
    memory = Memory(dim=2, size=5, views=[0], field="K")
    assert memory.read().shape == (1, 0, 2)  # empty: no random negatives
    memory.write([torch.tensor([[1.0, 0.0], [2.0, 0.0]])])
    assert memory.read()[0].tolist() == [[1.0, 0.0], [2.0, 0.0]]
    memory.write([torch.tensor([[3.0, 0.0], [4.0, 0.0]])])
    memory.write([torch.tensor([[5.0, 0.0], [6.0, 0.0]])])  # fills and wraps: 6 overwrites 1
    assert memory.read() is memory.rows and memory.read()[0, :, 0].tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    assert set(memory.state_dict()) == {"rows", "ptr", "filled"}

    partial = Memory(dim=2, size=5, views=[0], field="K")
    partial.write([torch.ones(3, 2)])
    restored = Memory(dim=2, size=5, views=[0], field="K")
    restored.load_state_dict(partial.state_dict())
    assert restored.read().shape == (1, 3, 2) and int(restored.ptr) == 3


def test_memory_slots_start_epoch_and_whole_reads():
    """SwAV's use: one slot per view, written from its start epoch on, read only once full."""
    memory = Memory(dim=1, size=4, views=[0, 1], field="swav_queue_length", start_epoch=2, whole=True)
    memory.set_epoch(1)
    memory.write([_rows(1, 2, dim=1), _rows(-1, -2, dim=1)])
    assert memory.read() is None and int(memory.filled) == 0  # before its start epoch it neither reads nor writes
    memory.set_epoch(2)
    memory.write([_rows(1, 2, dim=1), _rows(-1, -2, dim=1)])
    assert memory.read() is None  # half full
    memory.write([_rows(3, 4, dim=1), _rows(-3, -4, dim=1)])
    assert memory.read()[:, :, 0].tolist() == [[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, -3.0, -4.0]]


def test_memory_length_rules_name_their_fields():
    with pytest.raises(ValueError, match=r"ModelParams\.K: memory length 10 must be a multiple of batch_size 4"):
        check_length("ModelParams.K", 10, 4)
    with pytest.raises(ValueError, match=r"ModelParams\.K: got 0"):
        check_length("ModelParams.K", 0, 4)
    gathering = Memory(dim=1, size=12, views=[0], field="ModelParams.swav_queue_length", gather=True)
    gathering.check_global_batch(4, 3)
    with pytest.raises(ValueError, match=r"swav_queue_length: 12 must be a multiple of the global batch 8"):
        gathering.check_global_batch(4, 2)
    local = Memory(dim=1, size=12, views=[0], field="ModelParams.K", gather_field="ModelParams.gather_keys_for_queue")
    with pytest.warns(UserWarning, match="rank 0's rows only; set ModelParams.gather_keys_for_queue=True"):
        local.check_global_batch(4, 2)


def test_ema_update_m0_copies_m1_keeps_and_one_step_by_hand():
    target, online = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -1.0])]
    ema_update_(target, online, 1.0)
    assert target[0].tolist() == [1.0, 2.0]
    ema_update_(target, online, 0.9)
    assert target[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -1])
    ema_update_(target, online, 0.0)
    assert target[0].tolist() == [3.0, -1.0]


def test_momentum_target_updates_parameters_not_buffers():
    encoder = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    projection = nn.Linear(2, 2)
    target = MomentumTarget(encoder, projection, key_views=[1], shuffle_batch_norm=False)
    assert all(not p.requires_grad for p in target.parameters())
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in list(encoder.parameters()) + list(projection.parameters()):
            p.add_(1.0)
    encoder[1].running_mean.fill_(5.0)
    target.update([encoder, projection], m=0.75)
    for old, new in zip(before, target.parameters()):
        assert torch.allclose(new, old + 0.25)  # 0.75 old + 0.25 (old + 1)
    assert torch.equal(target.encoder[1].running_mean, torch.zeros(2))


def test_momentum_schedule_start_middle_end():
    schedule = MomentumSchedule(0.996, 1.0)
    assert schedule(0, 100) == pytest.approx(0.996)
    assert schedule(50, 100) == pytest.approx(0.998)
    assert schedule(100, 100) == pytest.approx(1.0)
    assert MomentumSchedule(0.99, 0.99)(37, 100) == pytest.approx(0.99)


@pytest.mark.parametrize("step,expected", [(0, 0.1), (4, 0.5), (9, 1.0), (10, 1.0), (60, 0.55), (110, 0.1), (200, 0.1)])
def test_warmup_cosine_schedule(step, expected):
    assert WarmupCosineSchedule(10, 110, 0.1)(step) == pytest.approx(expected)


def test_cosine_schedule_without_warmup_is_per_step():
    schedule = WarmupCosineSchedule(0, 4, 0.0)
    assert [schedule(s) for s in range(5)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]
    )


def test_byol_preset_excludes_every_bias_and_norm_parameter_by_identity():
    params = BYOLParams(dataset_name="synthetic", batch_size=8)
    model = SelfSupervisedMethod(params)
    regular, excluded = parameter_groups(model, params.weight_decay, [], True)
    excluded_ids = {id(p) for p in excluded["params"]}
    must_exclude = [
        model.model.bn1.weight,
        model.model.bn1.bias,
        model.model.layer2[0].downsample[1].weight,
        model.model.layer2[0].downsample[1].bias,
        model.step.projection.net[1].weight,
        model.step.projection.net[0].bias,
        model.step.prediction.net[1].weight,
        model.step.prediction.net[3].bias,
    ]
    assert all(id(p) in excluded_ids for p in must_exclude)
    regular_ids = {id(p) for p in regular["params"]}
    assert id(model.model.conv1.weight) in regular_ids and id(model.step.projection.net[0].weight) in regular_ids
    assert excluded["weight_decay"] == 0.0 and not excluded["use_lars"] and regular["use_lars"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(regular_ids) + len(excluded_ids) == len(trainable)  # target (EMA) parameters are never optimized
    assert not any(id(p) in regular_ids | excluded_ids for p in model.step.target.parameters())


def test_name_substring_exclusion_is_kept_for_compatibility():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    regular, excluded = parameter_groups(model, 1e-4, [".bias"], False)
    assert [id(p) for p in excluded["params"]] == [id(model[0].bias), id(model[1].bias)]
    with pytest.warns(UserWarning, match="'projection_model' is in no parameter name .*0.weight, 0.bias"):
        parameter_groups(model, 1e-4, ["projection_model"], False)


def test_mlp_layers_and_normalizations():
    assert isinstance(heads.MLP(4, 4, 8, 0).net, nn.Identity)
    assert isinstance(heads.MLP(4, 3, 8, 1).net, nn.Linear)
    three = heads.MLP(4, 3, 32, 3, "gn")
    kinds = [type(m).__name__ for m in three.net]
    assert kinds == ["Linear", "GroupNorm", "ReLU", "Linear", "GroupNorm", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="input_dim"):
        heads.MLP(4, 3, 8, 0)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    acc1, acc2 = probes.topk_accuracy(logits, torch.tensor([1, 1, 0]), topk=(1, 2))
    assert acc1.item() == pytest.approx(100 / 3) and acc2.item() == pytest.approx(200 / 3)
