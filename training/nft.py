"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) for unconditional epsilon-prediction DDPMs: `--algorithm nft`.

DDPO learns through the log-probabilities of the steps it sampled, so it can only train stochastic steps and
the low-noise ones barely at all. NFT needs no log-probabilities: it forward-noises each epoch's final images
to timesteps across the whole schedule and trains the UNet with `losses.nft_loss`, whose implicit positive and
negative policies are built from the trained model and an old policy. The old policy samples the rollouts
(any sampler: deterministic DDIM with `--eta 0` included) and follows the trained one as an EMA after each
epoch, with the official code's decay schedule min(rate x optimizer step, max).

The trainer core (`trainer.Trainer`) does the rest, as for DDPO: checkpoints hold the old policy too, so a
resumed run continues exactly; the KL leash (`--kl-coef`) is on the epsilon predictions (`losses.epsilon_kl`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from .config import TrainConfig
from .losses import epsilon_kl, nft_loss, optimality
from .performance import compile_policy
from .phases import Minibatch, StepLoss
from .sampling import Rollout, draw_normal
from .seeds import Purpose, generator
from .trainer import EpochSavedHook, Trainer


@dataclass
class NFTSamples:
    """What NFT's update trains on: the final images alone (the trajectories are not kept)."""

    images: torch.Tensor
    """(N, C, H, W): x_0 of each rollout, in model space."""


class NFTTrainer(Trainer[NFTSamples]):
    """Fine-tunes the UNet of a `DDPMPipeline` with DiffusionNFT; see the module docstring."""

    step_stats = ("loss", "nft_positive", "nft_negative", "kl_penalty")

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator | None = None,
        *,
        on_epoch_saved: EpochSavedHook | None = None,
    ):
        super().__init__(config, accelerator, on_epoch_saved=on_epoch_saved)
        unet = self.accelerator.unwrap_model(self.unet)
        self.old_unet = copy.deepcopy(unet).requires_grad_(False).eval()  # a deep copy runs eager
        """The old policy: samples the rollouts and anchors the loss; an EMA of the trained UNet."""
        if self.compiled:
            # Its own graph (eval, no gradients): it samples and scores eps_old at the training batch size alike.
            compile_policy(self.old_unet, self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.old_unet)

    def rollout_policy(self) -> torch.nn.Module:
        return self.old_unet

    def trained_steps(self) -> torch.Tensor:
        """Every timestep of the rollout schedule, deterministic ones included."""
        return torch.arange(self.config.num_steps)

    def collect(self, rollouts: list[Rollout]) -> NFTSamples:
        return NFTSamples(images=torch.cat([rollout.images for rollout in rollouts]))

    def loss(self, samples: NFTSamples, batch: Minibatch) -> StepLoss:
        """Forward-noise the minibatch's images to its timesteps, then the NFT (+ KL) loss; stats as `step_stats`."""
        config, accelerator = self.config, self.accelerator
        clean = samples.images[batch.rows]
        forward_noise = generator(
            config.seed, Purpose.FORWARD_NOISE, batch.epoch, accelerator.process_index, batch.position
        )
        noise = draw_normal(clean.shape, forward_noise, clean.device)
        tables = self.sampler.step_tables(clean.device)
        step_index = batch.step_index.to(clean.device)
        timesteps, alpha = tables.timesteps[step_index], tables.alpha_prod[step_index]
        shape = (-1,) + (1,) * (clean.ndim - 1)
        noisy = alpha.sqrt().view(shape) * clean + (1 - alpha).sqrt().view(shape) * noise  # DDPM eq. 4
        with torch.no_grad(), accelerator.autocast():
            eps_old = self.old_unet(noisy, timesteps).sample
            if config.kl_coef > 0:
                with self.frozen_base() as base:
                    eps_base = base(noisy, timesteps).sample
        with accelerator.autocast():
            eps_theta = self.unet(noisy, timesteps).sample
        optimal = optimality(batch.advantages, config.adv_clip_max)
        terms = nft_loss(eps_theta, eps_old, noisy, clean, alpha, optimal, config.nft_beta, config.adv_clip_max)
        loss = terms.loss
        kl = torch.zeros((), device=clean.device)
        if config.kl_coef > 0:
            kl = epsilon_kl(eps_theta, eps_base)
            loss = loss + config.kl_coef * kl
        return StepLoss(loss, torch.stack([loss.detach(), terms.positive, terms.negative, kl.detach()]))

    @torch.no_grad()
    def after_update(self) -> None:
        """The old policy follows: old <- decay * old + (1 - decay) * theta, decay = min(rate x steps so far, max)."""
        config = self.config
        decay = min(config.nft_old_decay_rate * self.progress.global_step, config.nft_old_decay_max)
        trained = self.accelerator.unwrap_model(self.unet).parameters()
        for old, new in zip(self.old_unet.parameters(), trained, strict=True):
            old.mul_(decay).add_(new.detach(), alpha=1 - decay)

    def describe_update(self) -> str:
        return (
            f"{self.num_train_timesteps} of {self.config.num_steps} steps trained per sample, each on the final "
            "image forward-noised to its timestep (deterministic steps included)"
        )
