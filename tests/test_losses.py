"""The PPO clipped surrogate and NFT's KL leash against hand computations in plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from ddpo_hub.training.losses import epsilon_kl, ppo_clip_loss

CLIP = 0.1
# log p - log p_old of each element, its advantage, and which branch of max(-A r, -A clip(r)) is active:
#   0: d = 0.05  (r = 1.051, inside the clip range), A = +1.0  -> the two branches agree
#   1: d = 0.20  (r = 1.221 > 1.1),                   A = +2.0  -> clipped:   -2.0 * 1.1  > -2.0 * 1.221
#   2: d = -0.30 (r = 0.741 < 0.9),                   A = -1.5  -> clipped:   +1.5 * 0.9  > +1.5 * 0.741
#   3: d = 0.25  (r = 1.284 > 1.1),                   A = -0.5  -> unclipped: +0.5 * 1.284 > +0.5 * 1.1
#   4: d = -0.15 (r = 0.861 < 0.9),                   A = +0.8  -> unclipped: -0.8 * 0.861 > -0.8 * 0.9
OLD = [0.3, -1.0, 0.5, 2.0, -0.2]
DIFF = [0.05, 0.20, -0.30, 0.25, -0.15]
ADVANTAGES = [1.0, 2.0, -1.5, -0.5, 0.8]
CLIPPED_BRANCH_ACTIVE = [False, True, True, False, False]


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor(OLD, dtype=torch.float64)
    log_prob = (old + torch.tensor(DIFF, dtype=torch.float64)).requires_grad_(True)
    return log_prob, old, torch.tensor(ADVANTAGES, dtype=torch.float64)


def test_loss_kl_and_clipfrac_match_a_hand_computation():
    ratios = [math.exp(d) for d in DIFF]
    terms = [max(-a * r, -a * min(max(r, 1 - CLIP), 1 + CLIP)) for a, r in zip(ADVANTAGES, ratios, strict=True)]
    # Written out branch by branch, so the test does not just repeat the formula above.
    assert terms == pytest.approx(
        [-1.0 * math.exp(0.05), -2.0 * 1.1, 1.5 * 0.9, 0.5 * math.exp(0.25), -0.8 * math.exp(-0.15)]
    )
    expected_loss = sum(terms) / 5
    expected_kl = 0.5 * (0.05**2 + 0.20**2 + 0.30**2 + 0.25**2 + 0.15**2) / 5
    expected_clipfrac = 4 / 5  # every ratio but the first is outside [0.9, 1.1]

    log_prob, old, advantages = _tensors()
    result = ppo_clip_loss(log_prob, old, advantages, CLIP)
    assert result.loss.item() == pytest.approx(expected_loss, rel=1e-12)
    assert result.approx_kl.item() == pytest.approx(expected_kl, rel=1e-12)
    assert result.clipfrac.item() == pytest.approx(expected_clipfrac)
    assert not result.approx_kl.requires_grad and not result.clipfrac.requires_grad, "diagnostics are detached"


def test_gradient_is_zero_where_the_clipped_branch_is_active():
    log_prob, old, advantages = _tensors()
    ppo_clip_loss(log_prob, old, advantages, CLIP).loss.backward()
    expected = [
        0.0 if clipped else -a * math.exp(d) / 5
        for a, d, clipped in zip(ADVANTAGES, DIFF, CLIPPED_BRANCH_ACTIVE, strict=True)
    ]
    assert log_prob.grad.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert [value == 0.0 for value in log_prob.grad.tolist()] == CLIPPED_BRANCH_ACTIVE


def test_unchanged_policy_has_ratio_one_no_kl_and_the_plain_policy_gradient():
    """The first step of every epoch: log p == log p_old, so the loss is -mean(A) and nothing is clipped."""
    old = torch.tensor([0.5, -2.0, 1.0])
    log_prob = old.clone().requires_grad_(True)
    advantages = torch.tensor([1.0, -3.0, 0.5])
    result = ppo_clip_loss(log_prob, old, advantages, clip_range=1e-4)
    assert result.loss.item() == pytest.approx(-(1.0 - 3.0 + 0.5) / 3)
    assert result.approx_kl.item() == 0.0 and result.clipfrac.item() == 0.0
    result.loss.backward()
    assert log_prob.grad.tolist() == pytest.approx([-1.0 / 3, 3.0 / 3, -0.5 / 3])


def test_epsilon_kl_is_the_mean_squared_distance_of_the_predictions():
    eps = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(2, 1, 1, 2).requires_grad_(True)
    reference = torch.tensor([0.0, 1.0, 1.5, 0.5]).view(2, 1, 1, 2)
    # Differences 0.5, -2.0, 0.5, -0.5: squares 0.25 + 4.0 + 0.25 + 0.25 = 4.75 over 4 elements.
    kl = epsilon_kl(eps, reference)
    assert kl.item() == pytest.approx(4.75 / 4)
    kl.backward()
    # d/d eps of mean((eps - ref)^2) = 2 (eps - ref) / 4.
    assert eps.grad.flatten().tolist() == pytest.approx([0.25, -1.0, 0.25, -0.25])
    assert epsilon_kl(eps.detach().bfloat16(), reference.bfloat16()).dtype == torch.float32
