"""Mean JPEG size of fixed-seed samples from a base model and a DDPO run, per sampler (run by hand).

    python benchmarks/learning.py runs/tiny --num-images 64

Rows: the stochastic DDIM sampler DDPO trains (eta and steps from the run's config), DDPM ancestral
sampling, deterministic DDIM (eta 0) and PNDM, each with the same seeds for both models.
`--num-steps N` runs the first row with N steps instead, to see how the step count moves each model.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from ddpo_hub.training.config import TrainConfig
from ddpo_hub.training.evaluate import run_evaluation
from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.pipelines import load_unet_and_scheduler_config
from ddpo_hub.training.run_folder import read_config
from ddpo_hub.training.sampling import Rollout, StochasticSampler


def fixed_seed_rollout(unet: UNet2DModel, sampler: StochasticSampler, num_images: int) -> Rollout:
    """`num_images` rollouts of `sampler` from fixed noise: the same seeds for every model."""
    size = unet.config.sample_size
    noise = torch.randn((num_images, unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(0))
    return sampler.rollout(unet.eval(), noise, generator=torch.Generator().manual_seed(1))


def fixed_seed_images(unet: UNet2DModel, sampler: StochasticSampler, num_images: int) -> torch.Tensor:
    """The final images (in [-1, 1]) of `fixed_seed_rollout`."""
    return fixed_seed_rollout(unet, sampler, num_images).images


def training_sampler_images(model: str, config: TrainConfig, num_images: int) -> torch.Tensor:
    """`num_images` rollouts (in [-1, 1]) of the sampler DDPO optimised, from fixed noise."""
    unet, scheduler_config = load_unet_and_scheduler_config(model)
    return fixed_seed_images(unet, StochasticSampler.for_run(scheduler_config, config), num_images)


def training_sampler_sizes(model: str, config: TrainConfig, num_images: int) -> np.ndarray:
    """JPEG bytes of `num_images` rollouts of the sampler DDPO optimised, from fixed noise."""
    return np.asarray(jpeg_sizes(training_sampler_images(model, config, num_images)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--ddpm-steps", type=int, default=200)
    parser.add_argument("--trained-sampler-only", action="store_true", help="skip the DDPM, DDIM and PNDM rows")
    parser.add_argument(
        "--num-steps", type=int, help="run the trained sampler with this many steps instead of the run's own"
    )
    args = parser.parse_args()
    config = read_config(args.run_dir)
    base, model = config.base_model, str(args.run_dir)
    num_steps = config.num_steps if args.num_steps is None else args.num_steps
    trained = "trained" if num_steps == config.num_steps else f"trained with {config.num_steps}"
    sampler_config = dataclasses.replace(config, num_steps=num_steps)
    sampler_config.validate()  # a clear error for a step count no run could use

    rows = []
    base_sizes = training_sampler_sizes(base, sampler_config, args.num_images)
    model_sizes = training_sampler_sizes(model, sampler_config, args.num_images)
    label = f"{config.scheduler.upper()} {num_steps} steps, eta {config.eta} ({trained})"
    rows.append((label, base_sizes.mean(), model_sizes.mean()))
    if not args.trained_sampler_only:
        results, _ = run_evaluation(
            model,
            base,
            schedulers=["ddpm", "ddim", "pndm"],
            num_images=args.num_images,
            num_inference_steps={"ddpm": args.ddpm_steps, "ddim": 50, "pndm": 50},
        )
        for entry in results["schedulers"].values():
            name = entry["name"]
            label = f"{name} {entry['num_inference_steps']} steps" + (", eta 0" if name == "DDIM" else "")
            rows.append((label, entry["base"]["mean"], entry["model"]["mean"]))

    shown = Path(base).relative_to(Path.cwd()) if Path(base).is_relative_to(Path.cwd()) else base
    print(f"{args.num_images} fixed-seed samples, base {shown} vs {model}")
    print("| sampler | base mean JPEG (B) | fine-tuned (B) | change |")
    print("|---|---|---|---|")
    for label, before, after in rows:
        print(f"| {label} | {before:.0f} | {after:.0f} | {after / before - 1:+.1%} |")


if __name__ == "__main__":
    main()
