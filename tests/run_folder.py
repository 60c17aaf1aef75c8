"""Fabricated training run folders, laid out as the trainer writes them, for the hub, card and eval tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import make_tiny_pipeline

CONFIG = {
    "base_model": "google/ddpm-celebahq-256",
    "reward": "jpeg_compressibility",
    "preset": "tiny",
    "epochs": 3,
    "num_samples": 8,
    "sample_batch_size": 4,
    "train_batch_size": 2,
    "num_steps": 4,
    "eta": 1.0,
    "scheduler": "ddim",
    "learning_rate": 3e-4,
    "seed": 0,
    "mixed_precision": "no",
    "clip_range": 1e-4,
    "adv_clip_max": 5.0,
    "timestep_fraction": 1.0,
    "num_inner_epochs": 1,
    "use_lora": False,
    "push_to_hub": None,
    "push_every": 1,
    "hub_private": False,
    "hub_revision": None,
}

RUN_INFO = {
    "hardware": {"device": "cpu", "num_processes": 1, "mixed_precision": "no"},
    "versions": {
        "torch": "2.x",
        "diffusers": "0.x",
        "accelerate": "1.x",
        "huggingface_hub": "1.x",
        "python": "3.x",
        "ddpo_hub": "0.1.0",
    },
    "wall_time_seconds": 3723.5,
}


def metrics_row(epoch: int) -> dict:
    """Deterministic metrics: the JPEG size shrinks by 0.5 kB per epoch from 10 kB."""
    kb = 10.0 - 0.5 * (epoch - 1)
    return {
        "epoch": epoch,
        "global_step": 4 * epoch,
        "reward_mean": -kb,
        "reward_std": 0.4,
        "jpeg_kb_mean": kb,
        "loss": 0.01 * epoch,
        "approx_kl": 1e-5,
        "clipfrac": 0.1,
        "seconds": 2.0,
        "seconds_sampling": 1.0,
        "seconds_reward": 0.1,
        "seconds_training": 0.9,
    }


def sample_grid(seed: int) -> Image.Image:
    """A 2x2 grid of 16x16 noise pictures, standing in for the trainer's fixed-seed samples."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_run_folder(path: Path, *, epochs: int = 3, seed: int = 0, **config) -> Path:
    """A complete run folder after `epochs` epochs, training state and logs included."""
    path.mkdir(parents=True, exist_ok=True)
    make_tiny_pipeline(seed).save_pretrained(path)
    (path / "ddpo_config.json").write_text(json.dumps(CONFIG | {"epochs": epochs} | config, indent=2))
    (path / "run_info.json").write_text(json.dumps(RUN_INFO | {"epochs_completed": epochs}, indent=2))
    (path / "metrics.jsonl").write_text("".join(json.dumps(metrics_row(e)) + "\n" for e in range(1, epochs + 1)))
    (path / "samples").mkdir(exist_ok=True)
    sample_grid(0).save(path / "samples" / "epoch_0000.png")
    sample_grid(epochs).save(path / "samples" / f"epoch_{epochs:04d}.png")
    (path / "logs").mkdir(exist_ok=True)
    (path / "logs" / "events.out.tfevents.1.host").write_bytes(b"tensorboard")
    state = path / "checkpoints" / f"checkpoint_{epochs}"
    state.mkdir(parents=True, exist_ok=True)
    for name in ("optimizer.bin", "model.safetensors", "random_states_0.pkl", "scheduler.bin"):
        (state / name).write_bytes(b"training state")
    return path


def advance_run(path: Path, epochs: int, *, seed: int) -> None:
    """Continue a fabricated run to `epochs` epochs with new weights, as the trainer would after more epochs."""
    make_tiny_pipeline(seed).save_pretrained(path)
    info = json.loads((path / "run_info.json").read_text()) | {"epochs_completed": epochs}
    (path / "run_info.json").write_text(json.dumps(info, indent=2))
    (path / "metrics.jsonl").write_text("".join(json.dumps(metrics_row(e)) + "\n" for e in range(1, epochs + 1)))
    sample_grid(epochs).save(path / "samples" / f"epoch_{epochs:04d}.png")
