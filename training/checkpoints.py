"""The run folder: the latest pipeline, metrics, sample grids, run facts and resumable training state.

output_dir/
  model_index.json, unet/, scheduler/   the latest DDPMPipeline (stock diffusers layout)
  ddpo_config.json                      the resolved config
  run_info.json                         hardware, library versions, wall time
  metrics.jsonl                         one line per epoch
  samples/epoch_0000.png ...            grids from fixed seeds (0000 = the base model)
  logs/                                 TensorBoard
  checkpoints/checkpoint_<epoch>/       accelerate state (weights, optimizer, RNG, progress)
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from training.jpeg import to_pil

METRICS_FILENAME = "metrics.jsonl"
RUN_INFO_FILENAME = "run_info.json"
CHECKPOINTS_DIRNAME = "checkpoints"
SAMPLES_DIRNAME = "samples"


@dataclass
class TrainingProgress:
    """Where a run stands; saved inside every accelerate checkpoint so `--resume` continues from it."""

    epoch: int = 0
    global_step: int = 0
    wall_time_seconds: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_epoch(path: Path) -> int:
    match = re.fullmatch(r"checkpoint_(\d+)", path.name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected checkpoint_<epoch>).")
    return int(match.group(1))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = Path(run_dir) / CHECKPOINTS_DIRNAME
    candidates = [path for path in folder.glob("checkpoint_*") if re.fullmatch(r"checkpoint_\d+", path.name)]
    complete = [path for path in candidates if (path / "custom_checkpoint_0.pkl").is_file()]
    return max(complete, key=checkpoint_epoch, default=None)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """Turn `--resume` (`latest` or a folder) into a checkpoint folder; `latest` with none starts fresh."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / "custom_checkpoint_0.pkl").is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint folder of a ddpo-hub run.")
    return path


def save_pipeline(unet: UNet2DModel, scheduler_config: dict, run_dir: str | Path) -> None:
    """Save a stock `DDPMPipeline` (safetensors) that `DDPMPipeline.from_pretrained` loads unchanged."""
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler_config)).save_pretrained(run_dir)


def append_metrics(run_dir: str | Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS_FILENAME, "a") as file:
        file.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of `metrics.jsonl` in epoch order; where an epoch appears twice, its last row wins."""
    path = Path(run_dir) / METRICS_FILENAME
    if not path.is_file():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def truncate_metrics(run_dir: str | Path, last_epoch: int) -> None:
    """Drop rows written after the checkpoint a run resumes from, so each epoch appears once."""
    rows = [row for row in read_metrics(run_dir) if row["epoch"] <= last_epoch]
    (Path(run_dir) / METRICS_FILENAME).write_text("".join(json.dumps(row) + "\n" for row in rows))


def image_grid(images: torch.Tensor, columns: int | None = None) -> Image.Image:
    """Tile model-space images into one picture (the same uint8 conversion as the pipeline)."""
    tiles = to_pil(images)
    columns = columns or max(1, int(len(tiles) ** 0.5))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, tile in enumerate(tiles):
        grid.paste(tile, ((index % columns) * width, (index // columns) * height))
    return grid


def grid_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / SAMPLES_DIRNAME / f"epoch_{epoch:04d}.png"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "accelerate", "huggingface_hub", "peft", "ddpo-hub"):
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_run_info(run_dir: str | Path, *, hardware: dict, progress: TrainingProgress) -> None:
    info = {
        "hardware": hardware,
        "versions": library_versions(),
        "wall_time_seconds": round(progress.wall_time_seconds, 2),
        "epochs_completed": progress.epoch,
        "global_step": progress.global_step,
    }
    (Path(run_dir) / RUN_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
