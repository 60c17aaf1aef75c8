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


def epsilon_kl(eps: torch.Tensor, reference_eps: torch.Tensor) -> torch.Tensor:
    """NFT's KL leash: the mean squared distance between two models' epsilon predictions at the same x_t.

    From one x_t, two models' reverse steps (DDPM's or DDIM's) have means that differ by a timestep constant
    times their epsilon difference and share one std, so per sample their KL (`gaussian_kl`) is proportional
    to this; the official code takes the same squared distance of its velocity predictions. Averaged over the
    batch and the pixels, in float32 whatever the autocast precision.
    """
    return ((eps.float() - reference_eps.float()) ** 2).mean()


@dataclass
class NFTLoss:
    """The DiffusionNFT loss of a batch and its two halves (detached means), for logging."""

    loss: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor


def nft_loss(
    eps_theta: torch.Tensor,
    eps_old: torch.Tensor,
    noisy: torch.Tensor,
    clean: torch.Tensor,
    alpha_prod: torch.Tensor,
    optimality: torch.Tensor,
    beta: float,
    adv_clip_max: float,
) -> NFTLoss:
    """DiffusionNFT's policy loss (Zheng et al. 2025; as in the official code) for an epsilon-prediction DDPM.

    At fixed x_t = sqrt(a) x_0 + sqrt(1 - a) eps the prediction is affine in epsilon, so the paper's velocity
    form carries over exactly. The implicit positive and negative policies are built from the trained and the
    old (sampling) prediction:

        eps+ = beta eps_theta + (1 - beta) eps_old,     eps- = (1 + beta) eps_old - beta eps_theta,
        x0(eps) = (x_t - sqrt(1 - a) eps) / sqrt(a).

    Each is scored by its x_0 error with the official code's adaptive weight (the error's own mean absolute
    value, not differentiated), and the two are mixed by the optimality r in [0, 1]:

        L = adv_clip_max / beta * mean(r ||x0(eps+) - x_0||^2 / w+ + (1 - r) ||x0(eps-) - x_0||^2 / w-),

    with norms averaged over pixels. High-reward images pull eps_theta towards reproducing them, low-reward
    ones push it away, both through the old policy, which keeps every step on the forward process.
    """
    shape = (-1,) + (1,) * (clean.ndim - 1)
    alpha = alpha_prod.to(clean.device, torch.float32).view(shape)
    dims = tuple(range(1, clean.ndim))
    eps_theta, eps_old = eps_theta.float(), eps_old.float().detach()

    def weighted_error(eps: torch.Tensor) -> torch.Tensor:
        x0 = (noisy.float() - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        error = x0 - clean.float()
        weight = error.detach().abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        return (error**2 / weight).mean(dim=dims)

    positive = weighted_error(beta * eps_theta + (1 - beta) * eps_old)
    negative = weighted_error((1 + beta) * eps_old - beta * eps_theta)
    r = optimality.to(clean.device, torch.float32)
    loss = (adv_clip_max * (r * positive + (1 - r) * negative) / beta).mean()
    return NFTLoss(loss=loss, positive=positive.detach().mean(), negative=negative.detach().mean())


def optimality(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """Advantages clipped to +-adv_clip_max and mapped affinely onto [0, 1] (0.5 = an average image)."""
    return (advantages.clamp(-adv_clip_max, adv_clip_max) / adv_clip_max / 2 + 0.5).clamp(0, 1)
