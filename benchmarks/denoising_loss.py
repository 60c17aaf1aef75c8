"""Held-out denoising loss of base models, per band of timesteps (run by hand).

    python benchmarks/denoising_loss.py training/base_models/tiny-textures-32 runs/gpu1/long-60k

The pretraining loss (MSE of the predicted noise) on crops the models never saw (`build_texture_dataset` with
another seed), with the same timesteps and noise for every model. Uniform timestep draws average the bands
away; split up, they show whether a model gained at the last denoising steps (t < 100, where a flat image
comes out flat or grainy: `jpeg_floor.py`) at the price of the noisy ones, or gained everywhere.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DModel

from ddpo_hub.training.pretrain_base import build_texture_dataset, dataset_to_tensor, make_scheduler

BANDS = ((0, 25), (25, 100), (100, 300), (300, 600), (600, 1000))


@torch.no_grad()
def band_losses(unet: UNet2DModel, images: torch.Tensor, seed: int, batch_size: int = 128) -> list[float]:
    """Mean noise-prediction MSE per band: one uniform timestep per image in each band, fixed by `seed`."""
    scheduler, generator, losses = make_scheduler(), torch.Generator().manual_seed(seed), []
    for low, high in BANDS:
        timesteps = torch.randint(low, high, (len(images),), generator=generator)
        noise = torch.randn(images.shape, generator=generator)
        total = 0.0
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            noisy = scheduler.add_noise(images[part], noise[part], timesteps[part])
            total += (unet(noisy, timesteps[part]).sample - noise[part]).pow(2).sum().item()
        losses.append(total / noise.numel())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="DDPMPipeline folders")
    parser.add_argument("--num-images", type=int, default=1024)
    parser.add_argument("--data-seed", type=int, default=7, help="crops seed; the shipped model trained on 0 and 1")
    parser.add_argument("--seed", type=int, default=0, help="timesteps and noise")
    args = parser.parse_args()
    images = dataset_to_tensor(build_texture_dataset(args.num_images, 32, args.data_seed)).float() / 127.5 - 1
    print(f"noise-prediction MSE on {args.num_images} held-out crops (seed {args.data_seed}), by timestep band")
    print("| model | " + " | ".join(f"t in [{low}, {high})" for low, high in BANDS) + " |")
    print("|---|" + "---|" * len(BANDS))
    for model in args.models:
        unet = UNet2DModel.from_pretrained(model, subfolder="unet").eval()
        losses = band_losses(unet, images, args.seed)
        print(f"| {model} | " + " | ".join(f"{loss:.4f}" for loss in losses) + " |")


if __name__ == "__main__":
    main()
