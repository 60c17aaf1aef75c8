"""Where the JPEG bytes of `tiny` samples go, and why DDPO stalls short of -30 % there (run by hand).

    python benchmarks/jpeg_floor.py runs/tiny

Three tables, all with the sampler DDPO trained (the run's scheduler, steps and eta) and fixed seeds:

1. The floor: JPEG bytes of flat colour images, alone (header only) and with Gaussian grain of a given
   standard deviation. At 32x32 the header is more than half of a typical sample's bytes.
2. The samples of the base and of the fine-tuned model: bytes, the grain (standard deviation of an image
   minus its 3x3 box blur) and how much the colour varies within an image (its content).
3. Denoising content-free images: flat colours noised to timestep t, then sampled from step t to the end
   by each model. A model that keeps flat images flat lands near the first table's header-only size; the
   bytes above that are grain the model adds to content that has none.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from learning import fixed_seed_images

from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.pipelines import load_unet_and_scheduler_config
from ddpo_hub.training.run_folder import read_config
from ddpo_hub.training.sampling import StochasticSampler


def flat_colours(num_images: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform images of random mid-range colours in [-1, 1] (the range where clipping never hides grain)."""
    colours = torch.rand(num_images, 3, 1, 1, generator=generator) * 1.2 - 0.6
    return colours.expand(num_images, 3, size, size).contiguous()


def grain(images: torch.Tensor) -> float:
    """Mean standard deviation of the high frequencies: an image minus its 3x3 box blur."""
    kernel = torch.full((images.shape[1], 1, 3, 3), 1 / 9)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])
    return (images - blurred).std(dim=(1, 2, 3)).mean().item()


@torch.no_grad()
def denoise_flat(unet: UNet2DModel, sampler: StochasticSampler, start: int, num_images: int) -> torch.Tensor:
    """Flat colours noised to the timestep of step `start`, then denoised from there by `sampler`."""
    generator = torch.Generator().manual_seed(0)
    clean = flat_colours(num_images, unet.config.sample_size, generator)
    alpha = sampler.alphas_cumprod[sampler.timesteps[start]]
    sample = alpha.sqrt() * clean + (1 - alpha).sqrt() * torch.randn(clean.shape, generator=generator)
    for index in range(start, sampler.num_steps):
        mean = sampler.predict_mean(unet, sample, torch.full((num_images,), index))
        sample = mean + sampler.step_std[index] * torch.randn(sample.shape, generator=generator)
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument(
        "--last-steps", type=int, nargs="+", default=[2, 3, 5, 7], help="start this many steps from the end"
    )
    args = parser.parse_args()
    config = read_config(args.run_dir)
    models = {"base": config.base_model, "fine-tuned": str(args.run_dir)}
    loaded = {name: load_unet_and_scheduler_config(model) for name, model in models.items()}
    samplers = {
        name: StochasticSampler.for_run(scheduler_config, config) for name, (_, scheduler_config) in loaded.items()
    }
    size = loaded["base"][0].config.sample_size

    print(f"1. Flat {size}x{size} colours plus Gaussian grain ({args.num_images} images)")
    print("| grain std (in [-1, 1]) | mean JPEG (B) |")
    print("|---|---|")
    for std in (0.0, 0.01, 0.02, 0.03, 0.05):
        generator = torch.Generator().manual_seed(0)
        images = flat_colours(args.num_images, size, generator)
        images = images + std * torch.randn(images.shape, generator=generator)
        print(f"| {std} | {np.mean(jpeg_sizes(images)):.0f} |")

    steps = f"{config.scheduler.upper()} {config.num_steps} steps, eta {config.eta}"
    print(f"\n2. Samples ({args.num_images} fixed seeds, {steps})")
    print("| model | mean JPEG (B) | grain std | colour std within an image |")
    print("|---|---|---|---|")
    for name, (unet, _) in loaded.items():
        images = fixed_seed_images(unet, samplers[name], args.num_images)
        spread = images.std(dim=(2, 3)).mean().item()
        print(f"| {name} | {np.mean(jpeg_sizes(images)):.0f} | {grain(images):.4f} | {spread:.3f} |")

    timesteps = samplers["base"].timesteps
    starts = [config.num_steps - last for last in args.last_steps if 0 < last <= config.num_steps]
    print(f"\n3. Flat colours noised to timestep t, then denoised by each model ({steps}), mean JPEG (B)")
    print("| model | " + " | ".join(f"t = {int(timesteps[start])}" for start in starts) + " |")
    print("|---|" + "---|" * len(starts))
    for name, (unet, _) in loaded.items():
        images = [denoise_flat(unet.eval(), samplers[name], start, args.num_images) for start in starts]
        print(f"| {name} | " + " | ".join(f"{np.mean(jpeg_sizes(batch)):.0f}" for batch in images) + " |")


if __name__ == "__main__":
    main()
