"""Builders the test modules share (imported as a library; fixtures live in conftest.py): a free port, tiny
pipelines, the fast run settings, the interrupting reward.

conftest.py imports this module before it points huggingface_hub at the loopback Hub, so nothing here may
import huggingface_hub (or diffusers, which does) at import time.
"""

from __future__ import annotations

import itertools
import socket
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from diffusers import DDPMPipeline


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TINY_UNET_CONFIG = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=8,
)


def make_tiny_pipeline(seed: int = 0) -> DDPMPipeline:
    """A randomly initialised 16x16 DDPM pipeline: fast enough for unit tests on CPU."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_UNET_CONFIG)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    return DDPMPipeline(unet=unet, scheduler=scheduler)


FAST = dict(
    epochs=2,
    num_samples=8,
    sample_batch_size=8,
    train_batch_size=4,
    num_steps=4,
    timestep_fraction=1.0,
    learning_rate=1e-4,
    grid_size=4,
    grid_every=1,
)
"""Settings of a DDPO run on a tiny model that takes seconds: two epochs of 8 samples, 4-step rollouts."""
FAST_NFT = FAST | dict(algorithm="nft", eta=0.0, sample_batch_size=4, fidelity_num_images=4)
"""The same for NFT, with deterministic rollouts in two batches per epoch (so an interrupt can land mid-epoch)."""

_rewards_made = itertools.count()


def interrupting_reward(at_call: int = 4) -> str:
    """A new JPEG reward that dies like a killed process at its `at_call`-th batch, once; returns its `--reward`.

    Each call registers a reward of its own, with its own count, so no test shares or resets a counter. The
    interrupted run and its resume name the same reward, as a resume must keep its reward setting: the count goes
    on, so the kill happens once.
    """
    from ddpo_hub.training.rewards import jpeg_compressibility  # imports diffusers: not at import time

    name = f"interrupting_reward_{next(_rewards_made)}"
    calls = itertools.count(1)
    jpeg = jpeg_compressibility()

    def reward(images: torch.Tensor) -> np.ndarray:
        if next(calls) == at_call:
            raise KeyboardInterrupt("simulated kill mid-epoch")
        return jpeg(images)[0]

    globals()[name] = reward  # what `--reward tests.helpers:<name>` finds
    return f"{__name__}:{name}"
