"""How much the DDPO machinery costs on top of the UNet itself (run by hand, prints ratios).

    python benchmarks/overhead.py [--model tiny-textures-32] [--batch-size 32] [--num-steps 20]

* sampling: a rollout with log-probabilities vs the same number of bare `unet(x, t)` calls (target <= 1.05);
* training: one training phase of the trainer vs the same number of bare forward + backward calls with
  the same optimizer steps (target <= 1.15).
Each side is timed several times, interleaved, and the fastest run counts, so the ratio compares the
two on the same machine state.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.ddpo import DDPOTrainer


def fastest(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-textures-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as run_dir:
        config = resolve_config(
            overrides=dict(
                base_model=args.model,
                output_dir=run_dir,
                num_samples=args.batch_size,
                sample_batch_size=args.batch_size,
                train_batch_size=args.batch_size,
                num_steps=args.num_steps,
                timestep_fraction=1.0,
                mixed_precision=args.mixed_precision,
            )
        )
        trainer = DDPOTrainer(config)
        accelerator, sampler = trainer.accelerator, trainer.sampler
        unet = accelerator.unwrap_model(trainer.unet)
        device = accelerator.device
        shape = (args.batch_size, *trainer.sample_shape)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
        timesteps = sampler.timesteps.to(device)

        @torch.no_grad()
        def bare_sampling() -> None:
            sample = noise
            for timestep in timesteps:
                with accelerator.autocast():
                    sample = unet(sample, timestep.expand(args.batch_size)).sample.float()

        def ddpo_sampling() -> None:
            sampler.rollout(unet, noise, torch.Generator().manual_seed(1), autocast=accelerator.autocast)

        # The trainer's own epoch: its rollouts, rewarded one batch at a time (no reward thread), then its update.
        rollouts = trainer.sample_epoch(1)
        advantages = torch.randn(len(rollouts.rewards)).to(device)

        def ddpo_update() -> None:
            trainer.update(1, rollouts, advantages)

        num_updates = trainer.num_train_timesteps
        latents = torch.randn((num_updates, *shape), generator=torch.Generator().manual_seed(2)).to(device)

        def bare_training() -> None:
            trainer.unet.train()
            for index in range(num_updates):
                with accelerator.accumulate(trainer.unet), accelerator.autocast():
                    output = trainer.unet(latents[index], timesteps[index].expand(args.batch_size)).sample
                    accelerator.backward(output.float().mean())
                    trainer.optimizer.step()
                    trainer.optimizer.zero_grad()

        sampling = [fastest(bare_sampling, 1), fastest(ddpo_sampling, 1)]  # warm-up
        training = [fastest(bare_training, 1), fastest(ddpo_update, 1)]
        for _ in range(args.repeats):
            sampling = [min(sampling[0], fastest(bare_sampling, 1)), min(sampling[1], fastest(ddpo_sampling, 1))]
            training = [min(training[0], fastest(bare_training, 1)), min(training[1], fastest(ddpo_update, 1))]

    print(
        f"model {args.model}, batch {args.batch_size}, {args.num_steps} steps, {num_updates} trained steps, "
        f"device {device}, precision {args.mixed_precision}, torch threads {torch.get_num_threads()}"
    )
    print("| phase | bare UNet (s) | DDPO (s) | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| sampling | {sampling[0]:.3f} | {sampling[1]:.3f} | {sampling[1] / sampling[0]:.3f} | <= 1.05 |")
    print(f"| training | {training[0]:.3f} | {training[1]:.3f} | {training[1] / training[0]:.3f} | <= 1.15 |")


if __name__ == "__main__":
    main()
