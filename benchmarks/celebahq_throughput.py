"""Throughput of the `celebahq-256` preset on the real architecture (random weights), for a GPU session.

    python benchmarks/celebahq_throughput.py --epochs 2 --num-samples 32 --mixed-precision bf16

Builds google/ddpm-celebahq-256's UNet from its configuration (113.67 M parameters, no download), then
* re-scores one recorded rollout under the unchanged weights, as the trainer does (train mode, gradients
  on, the preset's precision), and prints the largest |ratio - 1|: it must be 0 for PPO's 1e-4 clip;
* runs the preset's DDPO epochs and prints samples/s for sampling and for training (from metrics.jsonl)
  and the peak GPU memory. Epoch 1 includes warm-up; the last epoch is the steady-state figure.
`--keep-base DIR` keeps the random-weight pipeline, e.g. for `overhead.py --model DIR`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.run_folder import read_metrics
from ddpo_hub.training.trainer import DDPOTrainer

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "ddpm-celebahq-256-config"


def build_random_celebahq(folder: Path) -> Path:
    """A `DDPMPipeline` folder with google/ddpm-celebahq-256's configuration and random weights."""
    unet = UNet2DModel.from_config(UNet2DModel.load_config(REFERENCE / "unet"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(REFERENCE / "scheduler")).save_pretrained(folder)
    return folder


def rescoring_drift(trainer: DDPOTrainer) -> float:
    """Largest |ratio - 1| when the trainer re-scores its own fresh rollout (one training batch, all steps).

    Nothing is back-propagated or stepped, so the trainer can train afterwards as if fresh.
    """
    accelerator, sampler = trainer.accelerator, trainer.sampler
    batch = trainer.config.train_batch_size
    noise = torch.randn((batch, *trainer.sample_shape), generator=torch.Generator().manual_seed(0))
    unet = accelerator.unwrap_model(trainer.unet).eval()
    rollout = sampler.rollout(
        unet, noise.to(accelerator.device), torch.Generator().manual_seed(1), autocast=accelerator.autocast
    )
    trainer.unet.train()
    drift = 0.0
    for index in torch.nonzero(rollout.trainable).squeeze(1).tolist():
        step_index = torch.full((batch,), index, dtype=torch.long)
        log_prob = sampler.score_step(
            trainer.unet, rollout.latents[:, index], step_index, rollout.latents[:, index + 1], accelerator.autocast
        )
        ratio = torch.exp(log_prob.detach() - rollout.log_probs[:, index])
        drift = max(drift, (ratio - 1).abs().max().item())
    return drift


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keep-base", type=Path, help="build the random-weight pipeline here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = build_random_celebahq(args.keep_base or Path(scratch) / "celebahq-random")
        config = resolve_config(
            preset="celebahq-256",
            overrides=dict(
                base_model=str(base),
                output_dir=str(Path(scratch) / "run"),
                epochs=args.epochs,
                num_samples=args.num_samples,
                mixed_precision=args.mixed_precision,
                eval_num_images=0,
                checkpoints_total_limit=1,
            ),
        )
        trainer = DDPOTrainer(config)
        drift = rescoring_drift(trainer)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        rows = read_metrics(config.output_dir)
    last = rows[-1]
    cuda = torch.cuda.is_available()
    figures = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "mixed_precision": args.mixed_precision,
        "num_steps": config.num_steps,
        "num_samples": args.num_samples,
        "sample_batch_size": config.sample_batch_size,
        "train_batch_size": config.train_batch_size,
        "trained_timesteps_per_sample": trainer.num_train_timesteps,
        "rescoring_max_abs_ratio_minus_1": drift,
        "sampling_samples_per_s": round(args.num_samples / last["seconds_sampling"], 3),
        "training_samples_per_s": round(args.num_samples * config.num_inner_epochs / last["seconds_training"], 3),
        "epoch_seconds": [row["seconds"] for row in rows],
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
