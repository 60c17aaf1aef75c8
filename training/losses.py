"""The training losses as pure functions of tensors, so each is unit-tested against a hand computation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PolicyLoss:
    """A loss to back-propagate and the diagnostics logged with it (detached scalars)."""

    loss: torch.Tensor
    approx_kl: torch.Tensor
    """0.5 * mean((log p - log p_old)^2): ddpo-pytorch's estimate of KL(old || new)."""
    clipfrac: torch.Tensor
    """Fraction of samples whose importance ratio left [1 - clip_range, 1 + clip_range]."""


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> PolicyLoss:
    """DDPO-IS: the PPO clipped surrogate of one denoising step (Black et al. 2023, eq. 5 with clipping).

    ratio = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t));
    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))).
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        approx_kl = 0.5 * ((log_prob - old_log_prob) ** 2).mean()
        clipfrac = (torch.abs(ratio - 1.0) > clip_range).float().mean()
    return PolicyLoss(loss=loss, approx_kl=approx_kl, clipfrac=clipfrac)


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(reference_mean, std^2)) of one denoising step, per sample, averaged over pixels.

    Both step policies share the schedule's std, so the closed form is ||mean - reference_mean||^2 / (2 std^2)
    (DPOK, Fan et al. 2023, eq. 8; Flow-GRPO's KL term). Averaged over pixels like the step's log-probability,
    so a KL coefficient and the policy-gradient term are on the same scale. Steps with std 0 give 0.
    """
    shape = (-1,) + (1,) * (mean.ndim - 1)
    std = std.to(mean.device, torch.float32)
    safe_std = torch.where(std > 0, std, torch.ones_like(std)).view(shape)
    squared = ((mean.float() - reference_mean.float()) ** 2 / (2 * safe_std**2)).mean(dim=tuple(range(1, mean.ndim)))
    return torch.where(std > 0, squared, torch.zeros_like(squared))
