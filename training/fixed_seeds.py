"""The fixed-seed set: images sampled from the same initial and per-step noise every epoch.

So each epoch pairs up with the base model seed by seed: the first `grid_size` images are the run's sample
grids, the first `fidelity_num_images` measure what the epoch's model costs against the base's images of the
same seeds (the fidelity figures and `kl_to_base` of metrics.jsonl).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from accelerate import Accelerator

from .config import TrainConfig
from .fidelity import fidelity_to_base
from .jpeg import jpeg_sizes
from .judge import SubjectJudge
from .sampling import Rollout, StochasticSampler
from .seeds import Purpose, generator

Policy = Callable[..., torch.Tensor]


class FixedSeeds:
    """A run's fixed-seed set, and the base model's images of it once `sample_base` drew them."""

    def __init__(
        self,
        config: TrainConfig,
        sampler: StochasticSampler,
        sample_shape: tuple[int, ...],
        accelerator: Accelerator,
        judge: SubjectJudge | None,
        compiled: bool,
    ):
        self.config, self.sampler, self.sample_shape, self.accelerator = config, sampler, sample_shape, accelerator
        self.judge = judge
        """The base's subject judge, if it ships one: the subject figures."""
        self.compiled = compiled
        self.size = max(config.fidelity_num_images, config.grid_size)
        """The fidelity images and the grid's (the first `grid_size`)."""
        self.base: Rollout | None = None
        self._base_bytes: np.ndarray | None = None

    @torch.no_grad()
    def sample(self, unet: Policy, reference: Callable[[], AbstractContextManager[Policy]] | None = None) -> Rollout:
        """The set sampled by `unet`; with `reference` (a context giving the base) each step's KL to its policy too."""
        if hasattr(unet, "eval"):
            unet.eval()
        seed, size, batch_size = self.config.seed, self.size, self.config.sample_batch_size
        noise = torch.randn((size, *self.sample_shape), generator=generator(seed, Purpose.GRID, 0))
        parts = []
        # Eager even when compiled: its batch sizes and eval mode are not training's, and would compile graphs of
        # their own (no ratio is taken of these samples).
        with torch.compiler.set_stance("force_eager") if self.compiled else nullcontext():
            for start in range(0, size, batch_size):
                stop = min(start + batch_size, size)
                with reference() if reference is not None else nullcontext() as base:
                    parts.append(
                        self.sampler.rollout(
                            unet,
                            noise[start:stop].to(self.accelerator.device),
                            generator=generator(seed, Purpose.GRID, 1, start),
                            autocast=self.accelerator.autocast,
                            reference=base,
                        )
                    )
        return Rollout(
            latents=torch.cat([part.latents[:, -1:] for part in parts]),  # the images are all that is kept
            timesteps=parts[0].timesteps,
            log_probs=torch.cat([part.log_probs for part in parts]),
            trainable=parts[0].trainable,
            kl_to_reference=torch.cat([part.kl_to_reference for part in parts]) if reference is not None else None,
        )

    def sample_base(self, base: Policy) -> Rollout:
        """Draw the base model's images of the set (once per process start) and their JPEG sizes."""
        self.base = self.sample(base)
        self._base_bytes = np.asarray(jpeg_sizes(self.base.images[: self.config.fidelity_num_images]))
        return self.base

    def fidelity(self, fixed: Rollout) -> dict[str, float]:
        """What the model that sampled `fixed` (with a reference) costs, against the base's images of the same seeds."""
        size = self.config.fidelity_num_images
        images, base_images = fixed.images[:size], self.base.images[:size]
        sizes = np.asarray(jpeg_sizes(images))
        # Over the trained steps, as the leash sees it: the near-deterministic ones divide by a tiny std.
        # A deterministic sampler (NFT with eta 0) has no step policies and so no KL: the key is left out.
        kl = fixed.kl_to_reference[:size][:, self.sampler.trainable.to(fixed.kl_to_reference.device)]
        return {
            "fidelity_jpeg_bytes_mean": float(sizes.mean()),
            "jpeg_change_vs_base": float(sizes.mean() / self._base_bytes.mean() - 1),
            **fidelity_to_base(images, base_images, self.judge),
            **({"kl_to_base": float(kl.mean())} if kl.numel() else {}),
        }
