"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) for unconditional epsilon-prediction DDPMs: `--algorithm nft`.

DDPO learns through the log-probabilities of the steps it sampled, so it can only train stochastic steps and
the low-noise ones barely at all. NFT needs no log-probabilities: it forward-noises each epoch's final images
to timesteps across the whole schedule and trains the UNet with `losses.nft_loss`, whose implicit positive and
negative policies are built from the trained model and an old policy. The old policy samples the rollouts
(any sampler: deterministic DDIM with `--eta 0` included) and follows the trained one as an EMA after each
epoch, with the official code's decay schedule min(rate x optimizer step, max).

Everything else is the DDPO trainer's: accelerate, the run folder, rewards and advantages, fidelity metrics,
checkpoints (the old policy included, so a resumed run continues exactly), the KL leash (`--kl-coef`, here
on the epsilon predictions, as the official code does on its velocities).
"""

from __future__ import annotations

import copy

import torch

from .losses import nft_loss, optimality
from .performance import compile_policy
from .sampling import Rollout, draw_normal
from .trainer import DDPOTrainer, EpochSamples, _generator

FORWARD_NOISE = 100
"""Purpose tag of the forward-process noise in `_generator` (DDPO's tags are 0-3)."""


class NFTTrainer(DDPOTrainer):
    """Fine-tunes the UNet of a `DDPMPipeline` with DiffusionNFT; see the module docstring."""

    step_stats = ("loss", "nft_positive", "nft_negative", "kl_penalty")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unet = self.accelerator.unwrap_model(self.unet)
        self.old_unet = copy.deepcopy(unet).requires_grad_(False).eval()  # a deep copy runs eager
        if self.compiled:
            # Its own graph (eval, no gradients): it samples and scores eps_old at the training batch size alike.
            compile_policy(self.old_unet, self.accelerator.device)
        self.accelerator.register_for_checkpointing(self.old_unet)
        self._steps_this_epoch = 0

    def _trainable_steps(self) -> int:
        return self.config.num_steps  # every timestep of the rollout schedule, deterministic ones included

    def _train_step_candidates(self) -> torch.Tensor:
        return torch.arange(self.config.num_steps)

    def _rollout_unet(self) -> torch.nn.Module:
        return self.old_unet

    def _epoch_samples(self, rollouts: list[Rollout]) -> EpochSamples:
        """NFT trains on the final images alone: the trajectories are not kept."""
        images = torch.cat([rollout.latents[:, -1:] for rollout in rollouts])
        return EpochSamples(latents=images, log_probs=torch.empty(0), advantages=torch.empty(0))

    def _train_epoch(self, epoch: int, samples: EpochSamples) -> dict[str, float]:
        self._steps_this_epoch = 0
        stats = super()._train_epoch(epoch, samples)
        self._update_old_policy()
        return stats

    @torch.no_grad()
    def _update_old_policy(self) -> None:
        """old <- decay * old + (1 - decay) * theta, decay = min(rate x optimizer steps so far, max)."""
        config = self.config
        decay = min(config.nft_old_decay_rate * self.progress.global_step, config.nft_old_decay_max)
        trained = self.accelerator.unwrap_model(self.unet).parameters()
        for old, new in zip(self.old_unet.parameters(), trained, strict=True):
            old.mul_(decay).add_(new.detach(), alpha=1 - decay)

    def _train_step(
        self, samples: EpochSamples, rows: torch.Tensor, step_index: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """One NFT step: forward-noise the minibatch's images to its timesteps, then the NFT (+ KL) loss."""
        config, accelerator = self.config, self.accelerator
        clean = samples.latents[rows, -1]
        generator = _generator(config.seed, FORWARD_NOISE, epoch, accelerator.process_index, self._steps_this_epoch)
        self._steps_this_epoch += 1
        noise = draw_normal(clean.shape, generator, clean.device)
        tables = self.sampler.step_tables(clean.device)
        step_index = step_index.to(clean.device)
        timesteps, alpha = tables.timesteps[step_index], tables.alpha_prod[step_index]
        shape = (-1,) + (1,) * (clean.ndim - 1)
        noisy = alpha.sqrt().view(shape) * clean + (1 - alpha).sqrt().view(shape) * noise  # DDPM eq. 4
        with accelerator.accumulate(self.unet):
            with torch.no_grad(), accelerator.autocast():
                eps_old = self.old_unet(noisy, timesteps).sample
                if config.kl_coef > 0:
                    with self._base_model() as base:
                        eps_base = base(noisy, timesteps).sample
            with accelerator.autocast():
                eps_theta = self.unet(noisy, timesteps).sample
            advantages = samples.advantages[rows]
            terms = nft_loss(
                eps_theta,
                eps_old,
                noisy,
                clean,
                alpha,
                optimality(advantages, config.adv_clip_max),
                config.nft_beta,
                config.adv_clip_max,
            )
            loss = terms.loss
            kl = torch.zeros((), device=clean.device)
            if config.kl_coef > 0:
                kl = ((eps_theta.float() - eps_base.float()) ** 2).mean()
                loss = loss + config.kl_coef * kl
            self._backward_and_step(loss, epoch)
        self._after_step()
        return torch.stack([loss.detach(), terms.positive, terms.negative, kl.detach()])
