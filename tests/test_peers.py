"""bench_quality's peer column: every peer (lightly's implementation of a preset's method) trains through the real
Trainer on our data module with our optimizer, and its EMA targets follow the momentum schedule."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_trainer, tiny

from selfsup.config import PRESETS
from selfsup.train.module import SelfSupervisedMethod
from selfsup.train.pipeline import PretrainingDataModule

pytest.importorskip("lightly")
from benchmarks import peers  # noqa: E402 - needs lightly


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(peers.PEERS))
def test_peer_trains_with_our_data_and_optimizer(preset):
    params = tiny(PRESETS[preset], K=64)
    peer = peers.PeerMethod(preset, params)
    trainer = cpu_trainer(limit_train_batches=2, limit_val_batches=0)
    before = [p.detach().clone() for p in peer.model.parameters()]
    targets_before = [t.state_dict()["0.weight"].clone() if "0.weight" in t.state_dict() else None
                      for _, t in peer.peer.momentum_targets()]
    trainer.fit(peer, datamodule=PretrainingDataModule(params))
    assert torch.isfinite(trainer.callback_metrics["step_train_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, peer.model.parameters()))  # the encoder learned
    ours = SelfSupervisedMethod(params)
    ours.trainer = trainer  # configure_optimizers reads the run's length from it
    assert type(trainer.optimizers[0]) is type(ours.configure_optimizers()["optimizer"])
    for (_, target), old in zip(peer.peer.momentum_targets(), targets_before):
        assert not any(p.requires_grad for p in target.parameters())
        if old is not None:  # the EMA moved the target towards the online weights
            assert not torch.equal(old, target.state_dict()["0.weight"])


def test_peer_ema_follows_our_momentum_schedule():
    params = tiny(PRESETS["byol"], m=0.5, use_momentum_schedule=False)
    peer = peers.PeerMethod("byol", params)
    online, target = peer.peer.momentum_targets()[0]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    expected = [0.5 * t + 0.5 * o for t, o in zip(target.parameters(), online.parameters())]
    trainer = cpu_trainer(max_steps=0)
    peer.trainer = trainer
    peer.on_train_batch_end(None, None, 0)
    for e, t in zip(expected, target.parameters()):
        torch.testing.assert_close(t, e)
