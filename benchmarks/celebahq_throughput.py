"""Throughput of the `celebahq-256` preset on the real architecture (random weights), for a GPU session.

    python benchmarks/celebahq_throughput.py --epochs 2 --num-samples 32 --mixed-precision bf16

Builds google/ddpm-celebahq-256's UNet from its configuration (113.67 M parameters, no download), runs the
preset's DDPO epochs and prints samples/s for sampling and for training (from metrics.jsonl) and the
peak GPU memory. Epoch 1 includes warm-up; the last epoch is the steady-state figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from training.checkpoints import read_metrics
from training.config import resolve_config
from training.trainer import train

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "ddpm-celebahq-256-config"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch) / "celebahq-random"
        unet = UNet2DModel.from_config(UNet2DModel.load_config(REFERENCE / "unet"))
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(REFERENCE / "scheduler")).save_pretrained(base)
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
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(config)
        rows = read_metrics(config.output_dir)
    last = rows[-1]
    figures = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "mixed_precision": args.mixed_precision,
        "num_steps": config.num_steps,
        "num_samples": args.num_samples,
        "sample_batch_size": config.sample_batch_size,
        "train_batch_size": config.train_batch_size,
        "sampling_samples_per_s": round(args.num_samples / last["seconds_sampling"], 3),
        "training_samples_per_s": round(args.num_samples * config.num_inner_epochs / last["seconds_training"], 3),
        "epoch_seconds": [row["seconds"] for row in rows],
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,  # noqa: E501
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
