"""The parts a `trainer.Trainer` is built from: its Accelerator, the trained UNet's LoRA adapters and optimizer,
the frozen copy of the base, and the plain UNet users load."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from .config import TrainConfig
from .performance import use_channels_last
from .run_folder import LOGS_DIR


def expected_processes() -> int:
    """The process count `Accelerator` will find (`accelerate launch` sets WORLD_SIZE), known before creating it."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's Accelerator: its precision, TensorBoard logs and numbered checkpoints in the run folder."""
    # accelerate keeps one process-wide state; a second run in the same process (a notebook, the publish job,
    # tests) may ask for another precision. The distributed set-up itself is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    run_dir = Path(config.output_dir)
    return Accelerator(
        # `accelerate launch --multi_gpu --num_processes N` on a CPU-only machine: gloo, not N solo runs.
        cpu=expected_processes() > 1 and not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(
            project_dir=str(run_dir),
            logging_dir=str(run_dir / LOGS_DIR),
            automatic_checkpoint_naming=True,
            total_limit=config.checkpoints_total_limit,
        ),
    )


def sample_shape(unet: UNet2DModel) -> tuple[int, int, int]:
    """(C, H, W) of the images `unet` denoises."""
    size = unet.config.sample_size
    return (unet.config.in_channels, *((size, size) if isinstance(size, int) else size))


def add_lora_adapters(unet: UNet2DModel, config: TrainConfig) -> torch.nn.Module:
    """`unet` frozen, with trainable LoRA adapters on `lora_target_modules` (peft, Gaussian-initialised)."""
    from peft import LoraConfig, get_peft_model

    unet.requires_grad_(False)
    adapters = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=config.lora_target_modules,
        init_lora_weights="gaussian",
    )
    return get_peft_model(unet, adapters)


def adamw(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )


def frozen_copy(unet: UNet2DModel, device: torch.device, channels_last: bool) -> UNet2DModel:
    """A copy of `unet` with its current weights, without gradients, in eval mode on `device`."""
    frozen = copy.deepcopy(unet).requires_grad_(False).eval().to(device)
    if channels_last:
        use_channels_last(frozen)
    return frozen


def plain_unet(unet: torch.nn.Module, ema: EMAModel | None, lora: bool) -> UNet2DModel:
    """The trained UNet (unwrapped from DDP) as users load it: EMA weights if kept, LoRA merged in, no peft."""
    if ema is None and not lora:
        return unet
    unet = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to([parameter for parameter in unet.parameters() if parameter.requires_grad])
    return unet.merge_and_unload() if lora else unet
