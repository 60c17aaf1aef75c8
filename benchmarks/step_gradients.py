"""How much each denoising step contributes to a DDPO update, and why `--min-train-std` exists (run by hand).

    python benchmarks/step_gradients.py [--model tiny-textures-32] [--num-steps 20] [--eta 1.0]

Samples one batch of rollouts from the model, turns their JPEG-compressibility rewards into normalised
advantages, and prints for every stochastic step its noise std and the norm of the gradient of the DDPO
loss (-advantage x log-prob, at ratio 1) restricted to that step. A step's log-prob gradient grows as
1/std, so a step with very little noise can dominate the whole update, although noise that small barely
changes the image, so its gradient carries next to no reward signal.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from learning import fixed_seed_rollout

from ddpo_hub.training.advantages import normalize
from ddpo_hub.training.pipelines import load_unet_and_scheduler_config
from ddpo_hub.training.rewards import jpeg_compressibility
from ddpo_hub.training.sampling import StochasticSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-textures-32")
    parser.add_argument("--num-steps", type=int, default=20)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    unet, scheduler_config = load_unet_and_scheduler_config(args.model)
    sampler = StochasticSampler(scheduler_config, kind="ddim", num_steps=args.num_steps, eta=args.eta)
    rollout = fixed_seed_rollout(unet, sampler, args.batch_size)
    rewards, _ = jpeg_compressibility()(rollout.images)
    advantages = torch.as_tensor(normalize(rewards, rewards.mean(), rewards.std()), dtype=torch.float32)

    unet.train()
    rows = []
    for index in torch.nonzero(sampler.step_std > 0).squeeze(1).tolist():
        unet.zero_grad(set_to_none=True)
        step_index = torch.full((args.batch_size,), index)
        log_prob = sampler.score_step(unet, rollout.latents[:, index], step_index, rollout.latents[:, index + 1])
        (-(advantages * log_prob).mean()).backward()
        norm = torch.cat([parameter.grad.flatten() for parameter in unet.parameters()]).norm().item()
        rows.append((index, int(sampler.timesteps[index]), sampler.step_std[index].item(), norm))

    median = float(np.median([norm for *_, norm in rows]))
    print(f"{args.model}, DDIM {args.num_steps} steps, eta {args.eta}, {args.batch_size} rollouts")
    print("| step | timestep | noise std | gradient norm | vs the median step |")
    print("|---|---|---|---|---|")
    for index, timestep, std, norm in rows:
        print(f"| {index} | {timestep} | {std:.4f} | {norm:.3e} | {norm / median:.1f}x |")


if __name__ == "__main__":
    main()
