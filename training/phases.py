"""What the trainer's public phases return and hand each other (`trainer.Trainer`).

`sample_epoch` -> `Rollouts`, `gather_rewards` -> `EpochRewards`, `update` -> `UpdateStats`; inside the
update, each training step's `Minibatch` goes to the algorithm's `loss`, which returns a `StepLoss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

SamplesT = TypeVar("SamplesT")
"""What an algorithm's update keeps of an epoch's rollouts (`ddpo.DDPOSamples`, `nft.NFTSamples`)."""


@dataclass
class Rollouts(Generic[SamplesT]):
    """One process's share of an epoch's rollouts, rewarded: what `Trainer.sample_epoch` returns."""

    samples: SamplesT
    """What the algorithm's update needs of the trajectories (`Trainer.collect`)."""
    rewards: np.ndarray
    """(N,) one reward per sample."""
    jpeg_bytes: np.ndarray
    """(N,) the JPEG size of each final image, for the report."""
    seconds_sampling: float
    """Seconds the batches took to sample (the GPU's work included)."""
    seconds_reward: float
    """Seconds the rewards still took once the last batch was sampled (the rest overlapped sampling)."""


@dataclass
class EpochRewards:
    """An epoch's rewards over every process, and this process's advantages: what `Trainer.gather_rewards` returns."""

    rewards: np.ndarray
    """(num_samples,) every process's rewards, in process order."""
    jpeg_bytes: np.ndarray
    """(num_samples,) and their final images' JPEG sizes."""
    advantages: torch.Tensor
    """(N,) this process's samples' advantages, normalised over the gathered batch and clipped, on its device."""


@dataclass
class Minibatch:
    """One training step's share of an epoch's samples, as `Trainer.update` hands it to `Trainer.loss`."""

    rows: torch.Tensor
    """(B,) which samples: rows the sampler fed the UNet together, in the same positions."""
    step_index: torch.Tensor
    """(B,) the rollout step each sample is trained on."""
    advantages: torch.Tensor
    """(B,) their advantages."""
    epoch: int
    """The epoch, from 1."""
    position: int
    """This process's training steps before this one in the epoch (NFT seeds its forward noise with it)."""


@dataclass
class StepLoss:
    """What `Trainer.loss` returns: the loss to back-propagate and the step's `step_stats` (detached)."""

    loss: torch.Tensor
    """A scalar, inside `accelerator.accumulate`: the core back-propagates it."""
    stats: torch.Tensor
    """(len(step_stats),) detached, summed over the epoch on the device (one host sync per epoch)."""


@dataclass
class UpdateStats:
    """An epoch's policy update: what `Trainer.update` returns."""

    stats: dict[str, float]
    """The algorithm's `step_stats`, averaged over the epoch's training steps and every process."""
    seconds: float
    """Seconds the update took on this process."""
