"""Builders the test modules share (imported as a library; fixtures live in conftest.py).

conftest.py imports this module before it points huggingface_hub at the loopback Hub, so nothing here may
import huggingface_hub (or diffusers, which does) at import time.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

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
