"""The run folder: every file a run writes, named once here, and the one reader of a finished run.

output_dir/
  model_index.json, unet/, scheduler/   the latest DDPMPipeline (stock diffusers layout)
  ddpo_config.json                      the resolved config
  run_info.json                         the resolved base model, hardware, library versions, wall time
  metrics.jsonl                         one line per epoch
  samples/epoch_0000.png ...            grids from fixed seeds (0000 = the base model)
  logs/                                 TensorBoard
  checkpoints/checkpoint_<epoch>/       accelerate state (weights, optimizer, RNG, progress) + our marker
  eval_results.json, eval_images/       ddpo-eval: base vs fine-tuned per scheduler
  README.md, images/                    the model card

The trainer writes it, and evaluation, the card and the Hub code read it through `load_run`, so a file
name or format changes in one place only.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from ddpo_hub.training.config import DDPOConfig
from ddpo_hub.training.jpeg import to_pil

CONFIG_NAME = "ddpo_config.json"
METRICS_NAME = "metrics.jsonl"
RUN_INFO_NAME = "run_info.json"
SAMPLES_DIR = "samples"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_COMPLETE_NAME = "ddpo_checkpoint_complete.json"
"""Written into a checkpoint folder after accelerate has saved all of it: a folder without it is incomplete."""
EVAL_RESULTS_NAME = "eval_results.json"
EVAL_IMAGES_DIR = "eval_images"
CARD_NAME = "README.md"
CARD_IMAGES_DIR = "images"

_CHECKPOINT = re.compile(r"checkpoint_(\d+)")
_SAMPLE = re.compile(r"epoch_(\d+)\.png")


class RunFolderError(ValueError):
    """The folder is not a ddpo-hub run folder, or lacks what the caller needs from it."""


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


# --- checkpoints ------------------------------------------------------------------------------------------


def checkpoint_epoch(path: Path) -> int:
    match = _CHECKPOINT.fullmatch(path.name)
    if not match:
        raise ValueError(f"{str(path)!r} is not a checkpoint folder (expected checkpoint_<epoch>).")
    return int(match.group(1))


def mark_checkpoint_complete(checkpoint: Path, progress: TrainingProgress) -> None:
    """Record that every file of `checkpoint` was written (call after `Accelerator.save_state`)."""
    (Path(checkpoint) / CHECKPOINT_COMPLETE_NAME).write_text(json.dumps(progress.state_dict()) + "\n")


def is_complete_checkpoint(path: Path) -> bool:
    return (Path(path) / CHECKPOINT_COMPLETE_NAME).is_file()


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    candidates = [path for path in folder.glob("checkpoint_*") if _CHECKPOINT.fullmatch(path.name)]
    return max(filter(is_complete_checkpoint, candidates), key=checkpoint_epoch, default=None)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """Turn `--resume` (`latest` or a folder) into a checkpoint folder; `latest` with none starts fresh."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint folder of a ddpo-hub run.")
    return path


# --- writing --------------------------------------------------------------------------------------------


def write_config(run_dir: str | Path, config: DDPOConfig) -> Path:
    path = Path(run_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def read_config(run_dir: str | Path) -> DDPOConfig:
    """The `DDPOConfig` a run was made with."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a ddpo-hub run folder: it has no {CONFIG_NAME}.")
    return DDPOConfig(**json.loads(path.read_text()))


def save_pipeline(unet: UNet2DModel, scheduler_config: dict, run_dir: str | Path) -> None:
    """Save a stock `DDPMPipeline` (safetensors) that `DDPMPipeline.from_pretrained` loads unchanged."""
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(scheduler_config)).save_pretrained(run_dir)


def append_metrics(run_dir: str | Path, row: dict) -> None:
    with open(Path(run_dir) / METRICS_NAME, "a") as file:
        file.write(json.dumps(row) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Rows of `metrics.jsonl` in epoch order; where an epoch appears twice, its last row wins."""
    path = Path(run_dir) / METRICS_NAME
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
    (Path(run_dir) / METRICS_NAME).write_text("".join(json.dumps(row) + "\n" for row in rows))


def image_grid(tiles: Sequence[Image.Image] | torch.Tensor, columns: int | None = None, gap: int = 0) -> Image.Image:
    """Tile equally sized images (or model-space tensors, converted as the pipeline does), `gap` white pixels apart."""
    if isinstance(tiles, torch.Tensor):
        tiles = to_pil(tiles)
    columns = columns or max(1, int(len(tiles) ** 0.5))
    rows = -(-len(tiles) // columns)
    width, height = tiles[0].size
    grid = Image.new("RGB", (columns * (width + gap) - gap, rows * (height + gap) - gap), "white")
    for index, tile in enumerate(tiles):
        grid.paste(tile.convert("RGB"), ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    return grid


def grid_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / SAMPLES_DIR / f"epoch_{epoch:04d}.png"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "accelerate", "huggingface_hub", "peft", "ddpo-hub"):
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_run_info(run_dir: str | Path, *, base_model_path: str, hardware: dict, progress: TrainingProgress) -> None:
    """`base_model_path` is where the base was actually loaded from (a resolved folder or a Hub id)."""
    info = {
        "base_model_path": base_model_path,
        "hardware": hardware,
        "versions": library_versions(),
        "wall_time_seconds": round(progress.wall_time_seconds, 2),
        "epochs_completed": progress.epoch,
        "global_step": progress.global_step,
    }
    (Path(run_dir) / RUN_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")


# --- reading a finished run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What a run folder holds, read once: the card, evaluation and Hub code all work from this."""

    run_dir: Path
    config: dict
    """`ddpo_config.json` as written (a dict: cards of runs made by older versions still render)."""
    info: dict
    metrics: list[dict]
    samples: list[tuple[int, Path]]
    """`samples/epoch_XXXX.png` files as (completed epochs, path), oldest first."""
    eval_results: dict | None
    """`eval_results.json` when the run was evaluated."""

    @property
    def epochs_completed(self) -> int:
        return int(self.info.get("epochs_completed") or (self.metrics[-1]["epoch"] if self.metrics else 0))

    @property
    def base_model(self) -> str | None:
        """The base as the user named it (a bundled name, a folder or a Hub id)."""
        return self.config.get("base_model")

    @property
    def base_model_path(self) -> str | None:
        """Where the base was loaded from: the folder or Hub id to load it again from any working directory."""
        return self.info.get("base_model_path") or self.base_model


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder; only `ddpo_config.json` is required."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise RunFolderError(f"{run_dir} is not a ddpo-hub run folder: it has no {CONFIG_NAME}.")
    samples = sorted(
        (int(match.group(1)), path)
        for path in (run_dir / SAMPLES_DIR).glob("epoch_*.png")
        if (match := _SAMPLE.fullmatch(path.name))
    )
    return Run(
        run_dir=run_dir,
        config=json.loads(config_path.read_text()),
        info=_read_json(run_dir / RUN_INFO_NAME) or {},
        metrics=read_metrics(run_dir),
        samples=samples,
        eval_results=_read_json(run_dir / EVAL_RESULTS_NAME),
    )


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
