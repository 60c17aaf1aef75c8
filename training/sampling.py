"""Stochastic reverse diffusion with per-step log-probabilities: the policy DDPO optimises.

Each denoising step is a Gaussian policy x_{t-1} ~ N(mean(x_t, t), std_t^2) (DDPO, Sec. 4.2). We compute
`mean` and `std` ourselves, vectorised over a per-sample timestep, with the same arithmetic as diffusers'
`DDIMScheduler.step` (eta > 0) and `DDPMScheduler.step`, so the trainer can re-score any recorded step.

Two rules keep the importance ratio exact:
* the scheduler arithmetic and the log-density run in float32, whatever the UNet's autocast precision;
* the UNet sees each sample at the same position of a batch of the same size when sampling and when
  re-scoring (`forward_batch_size` = the training batch size). CPU and GPU kernels round differently
  at different batch positions, so a shuffled re-score drifts (~1e-7 in fp32, ~1e-3 in bf16), whereas a
  position-preserving one reproduces the recorded log-probability bit for bit (ratio exactly 1).

The final step has a standard deviation of exactly 0 whenever the schedule ends at alpha_prod = 1
(`DDIMScheduler` with `set_alpha_to_one=True`, the default for DDPM configs) and always for DDPM's t = 0.
Such a step is deterministic: it has no log-density, so it is recorded with log-prob 0 and excluded
from training (`Rollout.trainable`).

Steps with a standard deviation of at most `min_train_std` are recorded but not trained on either. The
gradient of a step's log-density grows as 1/std, while noise that small barely changes the image: on
DDPM's schedule the last stochastic step has std ~0.01 (about 15x less than the step before), and its
gradient is ~36x the median step's (`benchmarks/step_gradients.py`), with next to no reward signal in it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from .losses import gaussian_kl

if TYPE_CHECKING:
    from .config import TrainConfig

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def draw_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise drawn by `generator`, on `device`, without making the host wait for the GPU.

    A CPU generator on a GPU run draws into pinned memory and copies without waiting: a plain `.to(device)`
    synchronises with the GPU's queue, so the GPU would idle while the host draws the next noise.
    """
    device = torch.device(device)
    pin = generator.device.type == "cpu" and device.type == "cuda"
    noise = torch.randn(shape, generator=generator, device=generator.device, pin_memory=pin)
    return noise.to(device, non_blocking=pin)


@dataclass
class Rollout:
    """A batch of recorded trajectories, everything on the CPU or the sampling device in float32."""

    latents: torch.Tensor
    """(B, S + 1, C, H, W): x_T, ..., x_0."""
    timesteps: torch.Tensor
    """(S,): the timestep of each step, shared by the batch."""
    log_probs: torch.Tensor
    """(B, S): log-density of each step under the sampling model (0 where the step is deterministic)."""
    trainable: torch.Tensor
    """(S,) bool: the steps DDPO trains on, those with a standard deviation above the sampler's minimum."""
    kl_to_reference: torch.Tensor | None = None
    """(B, S): per-step KL of the sampling policy to a reference model's at the same x_t, when one was given."""

    @property
    def images(self) -> torch.Tensor:
        """Final samples in [-1, 1] (model space)."""
        return self.latents[:, -1]


@dataclass
class _StepTables:
    """Per-step constants of a sampler, indexed by step index, on one device."""

    timesteps: torch.Tensor
    alpha_prod: torch.Tensor
    alpha_prod_prev: torch.Tensor
    std: torch.Tensor


class StochasticSampler:
    """DDIM (eta > 0) or DDPM ancestral sampling whose steps can be re-scored exactly."""

    def __init__(
        self,
        scheduler_config: dict,
        *,
        kind: str = "ddim",
        num_steps: int = 20,
        eta: float = 1.0,
        min_train_std: float = 0.0,
        max_train_std: float = 1.0,
    ):
        if kind not in ("ddim", "ddpm"):
            raise ValueError(f"Unknown sampler {kind!r}; use 'ddim' or 'ddpm'.")
        scheduler_class = DDIMScheduler if kind == "ddim" else DDPMScheduler
        self.scheduler = scheduler_class.from_config(scheduler_config)
        config = self.scheduler.config
        if config.get("thresholding", False):
            raise ValueError("Schedulers with dynamic thresholding are not supported by the DDPO sampler.")
        variance_type = config.get("variance_type", "fixed_small")
        if kind == "ddpm" and variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"DDPM rollouts need a fixed variance, got variance_type={variance_type!r}.")
        self.kind = kind
        self.eta = eta if kind == "ddim" else 1.0
        self.num_steps = num_steps
        self.scheduler.set_timesteps(num_steps)
        self.timesteps = self.scheduler.timesteps.long().cpu()
        if kind == "ddim":
            step_ratio = config.num_train_timesteps // num_steps
            self.prev_timesteps = self.timesteps - step_ratio
        else:
            self.prev_timesteps = torch.cat([self.timesteps[1:], torch.tensor([-1])])
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        final = getattr(self.scheduler, "final_alpha_cumprod", None) if kind == "ddim" else None
        self.final_alpha_cumprod = torch.as_tensor(1.0 if final is None else final, dtype=torch.float32)
        self.step_std = self._std(self.timesteps, self.prev_timesteps)
        self.trainable = (self.step_std > max(min_train_std, 0.0)) & (self.step_std <= max_train_std)
        self._step_tables: dict[torch.device, _StepTables] = {}

    @classmethod
    def for_run(cls, scheduler_config: dict, config: TrainConfig) -> StochasticSampler:
        """The sampler a DDPO run configures: its scheduler kind, steps, eta and `min_train_std`."""
        return cls(
            scheduler_config,
            kind=config.scheduler,
            num_steps=config.num_steps,
            eta=config.eta,
            min_train_std=config.min_train_std,
            max_train_std=config.max_train_std,
        )

    def step_tables(self, device: torch.device | str) -> _StepTables:
        """Per-step constants on `device`, built once: indexing them needs no host-device copy (no GPU sync)."""
        device = torch.device(device)
        if device not in self._step_tables:
            self._step_tables[device] = _StepTables(
                timesteps=self.timesteps.to(device),
                alpha_prod=self._alpha_prod(self.timesteps).to(device),
                alpha_prod_prev=self._alpha_prod(self.prev_timesteps).to(device),
                std=self.step_std.to(device),
            )
        return self._step_tables[device]

    # --- the Gaussian policy of one step ---------------------------------------------------------------

    def _alpha_prod(self, timesteps: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas_cumprod[timesteps.clamp(min=0)]
        return torch.where(timesteps >= 0, alphas, self.final_alpha_cumprod)

    def _std(self, timesteps: torch.Tensor, prev_timesteps: torch.Tensor) -> torch.Tensor:
        alpha_t, alpha_prev = self._alpha_prod(timesteps), self._alpha_prod(prev_timesteps)
        variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)  # DDIM eq. 16 / DDPM beta-tilde
        if self.kind == "ddpm":
            if self.scheduler.config.get("variance_type", "fixed_small") == "fixed_large":
                variance = 1 - alpha_t / alpha_prev
            variance = torch.where(timesteps > 0, variance.clamp(min=1e-20), torch.zeros_like(variance))
        return self.eta * variance.sqrt()

    def step_mean(self, model_output: torch.Tensor, sample: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """Mean of x_{t-1} given x_t (float32), per sample: `step_index` has shape (B,)."""
        config = self.scheduler.config
        tables = self.step_tables(sample.device)
        step_index = step_index.to(sample.device)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        alpha_t = tables.alpha_prod[step_index].view(shape)
        alpha_prev = tables.alpha_prod_prev[step_index].view(shape)
        beta_t = 1 - alpha_t
        model_output = model_output.float()
        if config.prediction_type == "epsilon":
            x0 = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
            epsilon = model_output
        elif config.prediction_type == "sample":
            x0 = model_output
            epsilon = (sample - alpha_t.sqrt() * x0) / beta_t.sqrt()
        elif config.prediction_type == "v_prediction":
            x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
            epsilon = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
        else:
            raise ValueError(f"Unsupported prediction_type {config.prediction_type!r}.")
        if config.clip_sample:
            x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
        if self.kind == "ddim":  # DDIM eq. 12, the "direction pointing to x_t" uses the unclipped epsilon
            std = tables.std[step_index].view(shape)
            return alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).clamp(min=0).sqrt() * epsilon
        current_alpha = alpha_t / alpha_prev  # DDPM eq. 7
        return (alpha_prev.sqrt() * (1 - current_alpha) / beta_t) * x0 + (
            current_alpha.sqrt() * (1 - alpha_prev) / beta_t
        ) * sample

    def log_prob(self, next_sample: torch.Tensor, mean: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        """Gaussian log-density of the step, averaged over the non-batch dimensions (sums overflow the ratio).

        Deterministic steps (std 0) get 0; they are never trained on.
        """
        shape = (-1,) + (1,) * (mean.ndim - 1)
        std = self.step_tables(mean.device).std[step_index.to(mean.device)]
        safe_std = torch.where(std > 0, std, torch.ones_like(std)).view(shape)
        density = -((next_sample.float() - mean) ** 2) / (2 * safe_std**2) - safe_std.log() - LOG_SQRT_2PI
        return torch.where(std > 0, density.mean(dim=tuple(range(1, mean.ndim))), torch.zeros_like(std))

    def predict_mean(
        self,
        unet: Callable[..., torch.Tensor],
        sample: torch.Tensor,
        step_index: torch.Tensor,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> torch.Tensor:
        """Run the UNet (inside a fresh `autocast()` context) and turn its output into the step's float32 mean.

        The UNet gets a contiguous sample (a no-op for the sampler's and trainer's own batches): a compiled graph
        is specialised to its inputs' strides, so a strided view, e.g. `rollout.latents[:, index]`, would compile
        another graph. Its output is made contiguous too (a no-op but for a channels_last UNet): the step's pixel
        means round by memory order, and sampling and re-scoring must round alike.
        """
        step_index = step_index.to(sample.device)
        with autocast():
            model_output = unet(sample.contiguous(), self.step_tables(sample.device).timesteps[step_index]).sample
        model_output = model_output.contiguous()
        return self.step_mean(model_output, sample, step_index)

    def score_step(
        self,
        unet: Callable[..., torch.Tensor],
        sample: torch.Tensor,
        step_index: torch.Tensor,
        next_sample: torch.Tensor,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> torch.Tensor:
        """Log-probability of `sample -> next_sample` under `unet`: how the trainer re-scores a recorded step."""
        return self.log_prob(next_sample, self.predict_mean(unet, sample, step_index, autocast), step_index)

    # --- rollouts -------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(
        self,
        unet: UNet2DModel,
        noise: torch.Tensor,
        generator: torch.Generator,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        forward_batch_size: int | None = None,
        progress: bool = False,
        reference: Callable[..., torch.Tensor] | None = None,
    ) -> Rollout:
        """Denoise `noise` (x_T) to images, recording latents and log-probabilities of every step.

        `generator` draws the per-step noise, so a rollout is reproducible from its seed alone. The UNet
        runs on consecutive chunks of `forward_batch_size` samples: the batches the trainer re-scores.
        With a `reference` UNet (the base model), each step's KL to the reference's step policy is recorded too.
        """
        batch = noise.shape[0]
        chunk = forward_batch_size or batch
        sample = noise.float()
        latents, log_probs, kls = [sample], [], []
        # Nothing in this loop waits for the GPU: each step's noise is drawn while the UNet runs (`draw_normal`).
        for index in tqdm(range(self.num_steps), desc="sampling steps", leave=False, disable=not progress):
            step_index = torch.full((batch,), index, dtype=torch.long, device=sample.device)
            mean = torch.cat(
                [
                    self.predict_mean(unet, part, part_index, autocast)
                    for part, part_index in zip(sample.split(chunk), step_index.split(chunk), strict=True)
                ]
            )
            if reference is not None:
                reference_mean = torch.cat(
                    [
                        self.predict_mean(reference, part, part_index, autocast)
                        for part, part_index in zip(sample.split(chunk), step_index.split(chunk), strict=True)
                    ]
                )
                kls.append(gaussian_kl(mean, reference_mean, self.step_tables(sample.device).std[step_index]))
            step_noise = draw_normal(sample.shape, generator, sample.device)
            next_sample = mean + self.step_std[index].item() * step_noise  # step_std is on the CPU: no sync
            log_probs.append(self.log_prob(next_sample, mean, step_index))
            latents.append(next_sample)
            sample = next_sample
        return Rollout(
            latents=torch.stack(latents, dim=1),
            timesteps=self.timesteps.clone(),
            log_probs=torch.stack(log_probs, dim=1),
            trainable=self.trainable.clone(),
            kl_to_reference=torch.stack(kls, dim=1) if kls else None,
        )
