"""Batch Renormalization for [N, C] and [N, C, L] inputs.

Provenance: S. Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
arXiv:1702.03275, written from the paper's formulas. The r_max/d_max relaxation follows the paper's schedule
(r_max = 1 and d_max = 0 for 5k steps, r_max = 3 by 40k, d_max = 5 by 25k) as the linear ramps of methods.md 3.2.
Unlike the original repo, the running statistics are BatchNorm's (running_mean, unbiased running_var) and eps goes
inside the square root, so at step 0 the layer is exactly ``nn.BatchNorm1d``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def r_max(step: Tensor | int) -> Tensor:
    """Upper clip of r at training step ``step``: clamp(2t/35000 + 25/35, 1, 3), as a float32 tensor."""
    t = torch.as_tensor(step).float()
    # (t + 12500) / 17500 is the same line, written so the breakpoints 5k, 22.5k and 40k are exact in float32.
    return ((t + 12500) / 17500).clamp(1.0, 3.0)


def d_max(step: Tensor | int) -> Tensor:
    """Bound on |d| at training step ``step``: clamp(5t/20000 - 1.25, 0, 5), as a float32 tensor."""
    t = torch.as_tensor(step).float()
    # (t - 5000) / 4000 is the same line, written so the breakpoints 5k and 25k are exact in float32.
    return ((t - 5000) / 4000).clamp(0.0, 5.0)


class BatchRenorm1d(nn.Module):
    """Batch Renormalization over the channel dimension C of [N, C] or [N, C, L] inputs.

    Train mode: y = weight * ((x - mu_B) / sigma_B * r + d) + bias with sigma_B = sqrt(var_B + eps) (biased var_B),
    r = sg(clamp(sigma_B / sigma, 1/r_max, r_max)), d = sg(clamp((mu_B - running_mean) / sigma, -d_max, d_max)),
    sigma = sqrt(running_var + eps), and r_max, d_max ramped by t = num_batches_tracked, which increments on every
    train-mode forward (not per optimizer step). The running stats then move towards mu_B and the unbiased var_B.
    Eval mode: y = weight * (x - running_mean) / sigma + bias.

    Args:
        num_features: C.
        eps: added to the variances inside the square root.
        momentum: running-statistics update rate (BatchNorm's convention: new = (1 - m) * old + m * batch).
        affine: learn a per-channel weight and bias.
    """

    running_mean: Tensor  # [C]
    running_var: Tensor  # [C]
    num_batches_tracked: Tensor  # 0-d long

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.01, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C] or [N, C, L] -> same shape."""
        if x.dim() not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input [N, {self.num_features}] or [N, {self.num_features}, L], got {list(x.shape)}"
            )
        dims = (0,) if x.dim() == 2 else (0, 2)
        shape = (1, -1) if x.dim() == 2 else (1, -1, 1)  # broadcasts a [C] statistic over x

        if self.training:
            n = x.numel() // self.num_features
            if n < 2:
                raise ValueError(
                    f"BatchRenorm1d needs more than 1 value per channel in training, got input {list(x.shape)}"
                )
            var_b, mu_b = torch.var_mean(x, dim=dims, correction=0)  # [C] each
            sigma_b = torch.sqrt(var_b + self.eps)
            sigma = torch.sqrt(self.running_var + self.eps)
            t = self.num_batches_tracked
            rmax, dmax = r_max(t), d_max(t)
            # r and d are treated as constants (stop-gradient): the gradient is that of BN with batch moments, which
            # is what makes the layer trainable while r, d correct the output towards the running statistics.
            r = torch.clamp(sigma_b.detach() / sigma, 1 / rmax, rmax)
            d = torch.clamp((mu_b.detach() - self.running_mean) / sigma, -dmax, dmax)
            x_hat = (x - mu_b.view(shape)) / sigma_b.view(shape) * r.view(shape) + d.view(shape)
            with torch.no_grad():
                self.running_mean.lerp_(mu_b.to(self.running_mean.dtype), self.momentum)
                # The running variance is unbiased, as in nn.BatchNorm1d, so eval mode matches BN's convention.
                self.running_var.lerp_((var_b * (n / (n - 1))).to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        else:
            x_hat = (x - self.running_mean.view(shape)) / torch.sqrt(self.running_var + self.eps).view(shape)

        if self.affine:
            return x_hat * self.weight.view(shape) + self.bias.view(shape)
        return x_hat
