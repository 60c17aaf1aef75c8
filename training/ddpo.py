"""DDPO-IS (Black et al. 2023, Alg. 1 with PPO clipping): `--algorithm ddpo`, the default.

The trained UNet samples each epoch's trajectories itself (on-policy), recording every step's log-probability.
The update re-scores random stochastic steps of each trajectory under the current weights and takes a clipped
policy-gradient step on the importance ratio (`losses.ppo_clip_loss`), optionally on a KL leash to the frozen
base's step policy (`--kl-coef`, `losses.gaussian_kl`). Deterministic steps have no log-density, and steps
outside `--min-train-std`/`--max-train-std` are left out (`sampling.StochasticSampler.trainable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .config import TrainConfig
from .losses import gaussian_kl, ppo_clip_loss
from .performance import TrainingGraph
from .phases import Minibatch, StepLoss
from .sampling import Rollout
from .trainer import Trainer


@dataclass
class DDPOSamples:
    """What DDPO's update re-scores: each trajectory's states, and each step's log-probability as sampled."""

    latents: torch.Tensor
    """(N, S + 1, C, H, W): x_T, ..., x_0."""
    log_probs: torch.Tensor
    """(N, S): log p(x_{t-1} | x_t) under the weights that sampled it (0 where the step is deterministic)."""


class DDPOTrainer(Trainer[DDPOSamples]):
    """Fine-tunes the UNet of a `DDPMPipeline` with DDPO so that a reward of its images goes up."""

    step_stats = ("loss", "approx_kl", "clipfrac", "kl_penalty")

    def rollout_policy(self) -> torch.nn.Module | TrainingGraph:
        """On-policy: the trained UNet.

        Compiled, it samples through the training graph, in train mode with gradients on, as re-scoring runs
        it: a graph of its own (eval mode, no gradients) would round differently and move the ratios off 1.
        """
        unet = self.accelerator.unwrap_model(self.unet)
        return TrainingGraph(unet.train()) if self.compiled else unet.eval()

    def trained_steps(self) -> torch.Tensor:
        """The stochastic steps with a noise std in (`min_train_std`, `max_train_std`]."""
        config = self.config
        steps = torch.nonzero(self.sampler.trainable).squeeze(1)
        if len(steps) == 0:
            raise ValueError(
                f"No step of the {config.num_steps}-step {config.scheduler} sampler has a noise std above "
                f"--min-train-std {config.min_train_std} and at most --max-train-std {config.max_train_std} (the "
                f"largest is {self.sampler.step_std.max():.4f}); widen that range, or raise --eta or --num-steps."
            )
        return steps

    def collect(self, rollouts: list[Rollout]) -> DDPOSamples:
        return DDPOSamples(
            latents=torch.cat([rollout.latents for rollout in rollouts]),
            log_probs=torch.cat([rollout.log_probs for rollout in rollouts]),
        )

    def loss(self, samples: DDPOSamples, batch: Minibatch) -> StepLoss:
        """The PPO-clipped policy-gradient loss of one step per sample (+ the KL leash); stats as `step_stats`."""
        config, accelerator, sampler = self.config, self.accelerator, self.sampler
        rows, step_index = batch.rows, batch.step_index
        sample, next_sample = samples.latents[rows, step_index], samples.latents[rows, step_index + 1]
        if config.kl_coef > 0:  # the base's step policy first, so disabling LoRA adapters never meets the graph
            with self.frozen_base() as base:
                base_mean = sampler.predict_mean(base, sample, step_index, accelerator.autocast)
        mean = sampler.predict_mean(self.unet, sample, step_index, accelerator.autocast)
        log_prob = sampler.log_prob(next_sample, mean, step_index)
        policy = ppo_clip_loss(log_prob, samples.log_probs[rows, step_index], batch.advantages, config.clip_range)
        loss = policy.loss
        kl = torch.zeros((), device=mean.device)
        if config.kl_coef > 0:
            kl = gaussian_kl(mean, base_mean, sampler.step_tables(mean.device).std[step_index]).mean()
            loss = loss + config.kl_coef * kl
        return StepLoss(loss, torch.stack([loss.detach(), policy.approx_kl, policy.clipfrac, kl.detach()]))

    def describe_update(self) -> str:
        config, std = self.config, self.sampler.step_std
        excluded = torch.nonzero(~self.sampler.trainable).squeeze(1).tolist()
        return (
            f"{self.num_train_timesteps} of {len(self.trained_steps())} trainable steps trained per sample; not "
            f"trained (deterministic, or noise std <= --min-train-std {config.min_train_std:g} or > --max-train-std "
            f"{config.max_train_std:g}): "
            + (", ".join(f"{index} (std {std[index]:.4f})" for index in excluded) or "none")
        )


def train(config: TrainConfig) -> Path:
    """Fine-tune with DDPO as configured; returns the run folder."""
    return DDPOTrainer(config).train()
