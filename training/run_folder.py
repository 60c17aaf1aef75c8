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
  hub_pushes.json, hub_queue/           the push ledger and the epochs staged for the Hub (publish/hub_ledger.py)
  config_history.jsonl                  output-only settings a resume changed, with the epoch they took effect

The trainer writes it, and evaluation, the card and the Hub code read it through `load_run`, so a file
name or format changes in one place only.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from .config import TrainConfig
from .jpeg import to_pil
from .pipelines import Sampler

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
PUSH_LEDGER_NAME = "hub_pushes.json"
PUSH_QUEUE_DIR = "hub_queue"
CONFIG_HISTORY_NAME = "config_history.jsonl"
PIPELINE_NAMES = ("model_index.json", "unet", "scheduler")
"""The saved `DDPMPipeline`: diffusers' own layout."""

RUN_MARKERS = (CONFIG_NAME, METRICS_NAME, RUN_INFO_NAME, CHECKPOINTS_DIR, EVAL_RESULTS_NAME, "model_index.json")
"""Names only a run writes: a folder holding any of them holds a run (samples/, logs/ or README.md alone do not)."""
RUN_NAMES = (
    CONFIG_NAME,
    METRICS_NAME,
    RUN_INFO_NAME,
    *PIPELINE_NAMES,
    SAMPLES_DIR,
    LOGS_DIR,
    CHECKPOINTS_DIR,
    EVAL_RESULTS_NAME,
    EVAL_IMAGES_DIR,
    CARD_NAME,
    CARD_IMAGES_DIR,
    PUSH_LEDGER_NAME,
    PUSH_QUEUE_DIR,
    CONFIG_HISTORY_NAME,
)
"""Everything a run writes into its folder: what `--overwrite` deletes, and all it deletes."""

OUTPUT_ONLY_FIELDS = frozenset(
    {
        "preset",
        "output_dir",
        "epochs",
        "resume",
        "overwrite",
        "save_every",
        "checkpoints_total_limit",
        "grid_every",
        "eval_num_images",
        "eval_schedulers",
        "eval_num_inference_steps",
        "push_to_hub",
        "hub_private",
        "push_every",
        "hub_revision",
    }
)
"""`TrainConfig` fields a resumed run may change: they decide what is saved, evaluated or published, and for how
many epochs, never what an epoch trains. Every other field (including fields added later) must stay as the run
was started, or its epochs would not be one run."""

logger = logging.getLogger(__name__)

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


def damaged_checkpoint_message(checkpoint: Path, error: BaseException) -> str:
    """What to say when `checkpoint` fails to load: which one, why, and which other checkpoint to resume from."""
    others = sorted(
        (
            path
            for path in checkpoint.parent.glob("checkpoint_*")
            if path != checkpoint and is_complete_checkpoint(path)
        ),
        key=checkpoint_epoch,
    )
    hint = (
        f"resume from the newest other complete one with --resume {others[-1]}"
        if others
        else "no other complete checkpoint is left: start over with --overwrite"
    )
    detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (
        f"Checkpoint {checkpoint} could not be loaded ({type(error).__name__}{': ' + detail if detail else ''}): "
        f"one of its files is damaged or truncated. {hint[0].upper()}{hint[1:]}."
    )


# --- before a run starts: whose folder is it? --------------------------------------------------------------


def check_run_dir(run_dir: str | Path, config: TrainConfig) -> Path | None:
    """Refuse, before anything is written, a run that would clobber another or change a resumed run's meaning.

    Returns the checkpoint to resume from (None for a fresh run). Only reads the folder.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(
            f"--output-dir {str(run_dir)!r} is a file, not a folder: name a new or existing run folder."
        )
    if config.resume is None:
        check_fresh_run_dir(run_dir, config.overwrite)
        return None
    checkpoint = resolve_resume(run_dir, config.resume)
    if checkpoint is not None:
        check_resume_settings(run_dir, checkpoint, config)
    return checkpoint


def run_markers(run_dir: str | Path) -> list[str]:
    """The names in `run_dir` that show it holds a run (empty for a new or unrelated folder)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_MARKERS if (run_dir / name).exists()] if run_dir.is_dir() else []


def check_fresh_run_dir(run_dir: str | Path, overwrite: bool) -> None:
    """A fresh run may start in a new folder, an unrelated one, or (with `overwrite`) one holding another run."""
    found = run_markers(run_dir)
    if found and not overwrite:
        raise RunFolderError(
            f"{run_dir} already holds a ddpo-hub run (it has {', '.join(found)}); a fresh run there would overwrite "
            "it. Continue that run with --resume latest, replace it with --overwrite (deleting its pipeline, "
            "metrics, grids, logs, checkpoints, evaluation, card and unpublished Hub pushes), or choose another "
            "--output-dir."
        )


def clear_run_dir(run_dir: str | Path) -> list[str]:
    """Delete an old run's files for `--overwrite`: only the names in `RUN_NAMES`, nothing else in the folder."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_NAMES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def config_changes(saved: dict, config: TrainConfig) -> list[str]:
    """`name: old -> new` for each field that alters a run's meaning and differs from the saved config.

    A field an older version did not save had its default then; a saved field this version lacks is ignored.
    """
    defaults = TrainConfig()
    changes = []
    for item in fields(TrainConfig):
        name = item.name
        if name in OUTPUT_ONLY_FIELDS:
            continue
        old, new = saved.get(name, getattr(defaults, name)), getattr(config, name)
        if _normalised(old) == _normalised(new):
            continue
        if name == "base_model" and _same_folder(old, new):
            continue
        changes.append(f"{name}: {_shown(old)} -> {_shown(new)}")
    return changes


def check_resume_settings(run_dir: str | Path, checkpoint: Path, config: TrainConfig) -> None:
    """Refuse to resume with settings that change what the run trains, listing each difference."""
    run_dir = Path(run_dir)
    # The checkpoint's own run folder made it (`--resume` may name another run's checkpoint).
    owner = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else run_dir
    path = next((folder / CONFIG_NAME for folder in (owner, run_dir) if (folder / CONFIG_NAME).is_file()), None)
    if path is None:
        logger.warning("%s has no %s: the resumed run's settings cannot be checked against it.", owner, CONFIG_NAME)
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"Could not read {path}, the settings of the run to resume: {error}") from None
    changes = config_changes(saved, config)
    if changes:
        raise RunFolderError(
            f"Resuming from {checkpoint} would change settings that decide what the run trains, so its epochs "
            f"would not be one run: {'; '.join(changes)}. A resumed run may change only its epochs and its save, "
            "grid, evaluation and Hub settings. Resume with the run's settings (as in its "
            f"{CONFIG_NAME}), or start a new run in another --output-dir."
        )


def _normalised(value: Any) -> Any:
    """JSON round-trips tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def _same_folder(old: Any, new: Any) -> bool:
    """The same base model folder, named by two paths (a resume from another working directory)."""
    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    try:
        return Path(old).expanduser().resolve() == Path(new).expanduser().resolve() and Path(new).is_dir()
    except OSError:
        return False


def _shown(value: Any) -> str:
    return repr(value)


# --- writing --------------------------------------------------------------------------------------------


def write_config(run_dir: str | Path, config: TrainConfig, *, resumed_after: int | None = None) -> Path:
    """Save the run's config. On a resume (`resumed_after`: the checkpoint's epoch), first record in
    `config_history.jsonl` the output-only settings that changed, with the first epoch they apply to, so the
    card can say which epochs ran under which save, evaluation and Hub settings."""
    path = Path(run_dir) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if resumed_after is not None and path.is_file():
        changes = output_setting_changes(json.loads(path.read_text()), config)
        if changes:
            row = {"from_epoch": resumed_after + 1, "changes": changes}
            with open(path.parent / CONFIG_HISTORY_NAME, "a") as file:
                file.write(json.dumps(row) + "\n")
    path.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return path


def output_setting_changes(saved: dict, config: TrainConfig) -> dict[str, list]:
    """`{name: [old, new]}` for the output-only settings a resume changed (not the command's own modes)."""
    current = config.to_dict()
    return {
        name: [saved.get(name), current[name]]
        for name in sorted(OUTPUT_ONLY_FIELDS - {"resume", "overwrite", "output_dir"})
        if name in current and _normalised(saved.get(name)) != _normalised(current[name])
    }


def read_config_history(run_dir: str | Path) -> list[dict]:
    """Rows of `config_history.jsonl`: `{"from_epoch": N, "changes": {name: [old, new]}}`, oldest first."""
    path = Path(run_dir) / CONFIG_HISTORY_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_config(run_dir: str | Path) -> TrainConfig:
    """The `TrainConfig` a run was made with."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunFolderError(f"{run_dir} is not a ddpo-hub run folder: it has no {CONFIG_NAME}.")
    return TrainConfig(**json.loads(path.read_text()))


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


def save_grid(run_dir: str | Path, epoch: int, images: torch.Tensor) -> None:
    """The sample grid of an epoch's fixed-seed images (epoch 0: the base model's)."""
    path = grid_path(run_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "accelerate", "huggingface_hub", "peft", "ddpo-hub"):
        try:
            versions[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware(device: torch.device, num_processes: int, mixed_precision: str) -> dict[str, Any]:
    """What a run ran on, for `run_info.json`."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({_cpu_name()})"
    return {
        "device": name,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_name() -> str:
    return platform.processor() or platform.machine()


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
    config_history: list[dict]
    """Output-only settings changed by resumes, with the epoch they took effect (`read_config_history`)."""

    @property
    def epochs_completed(self) -> int:
        return int(self.info.get("epochs_completed") or (self.metrics[-1]["epoch"] if self.metrics else 0))

    @property
    def base_model(self) -> str | None:
        """The base as the user named it (a bundled name, a folder or a Hub id)."""
        return self.config.get("base_model")

    @property
    def rollout_sampler(self) -> Sampler:
        """The sampler its rollouts used, as a stock pipeline runs it: the scheduler, `num_steps`, DDIM's `eta`."""
        scheduler = str(self.config.get("scheduler", TrainConfig.scheduler)).upper()
        eta = float(self.config.get("eta", TrainConfig.eta)) if scheduler == "DDIM" else None
        return Sampler(scheduler, int(self.config.get("num_steps", TrainConfig.num_steps)), eta)

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
        config_history=read_config_history(run_dir),
    )


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
