"""Loading a DDPM model and choosing its sampler: the one place the trainer, evaluation and the Space share.

A `DDPMPipeline` folder holds a UNet and a scheduler config. Users sample it with DDPM, DDIM or PNDM;
each scheduler needs its own pipeline class (PNDM inside `DDPMPipeline` crashes), so we build the
pipeline around the same UNet instead of swapping the scheduler on a fixed pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    PNDMPipeline,
    PNDMScheduler,
    UNet2DModel,
)
from huggingface_hub import ModelCard, ModelCardData, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from PIL import Image


@dataclass(frozen=True)
class SchedulerChoice:
    """A sampler users can pick: its scheduler class, the pipeline that drives it, a default step count."""

    scheduler_class: type
    pipeline_class: type[DiffusionPipeline]
    default_steps: int
    max_steps: int = 1000
    min_steps: int = 1
    """Fewest inference steps the scheduler runs with."""


SCHEDULERS: dict[str, SchedulerChoice] = {
    "DDPM": SchedulerChoice(DDPMScheduler, DDPMPipeline, default_steps=1000),
    "DDIM": SchedulerChoice(DDIMScheduler, DDIMPipeline, default_steps=50),
    # PNDM's Runge-Kutta warm-up needs 4 timesteps; fewer crash inside `PNDMScheduler.set_timesteps`.
    "PNDM": SchedulerChoice(PNDMScheduler, PNDMPipeline, default_steps=50, min_steps=4),
}

BUNDLED_MODELS_DIR = Path(__file__).parent / "base_models"
TINY_BASE_MODEL = BUNDLED_MODELS_DIR / "tiny-emoji-32"
"""The small DDPM of emoji faces, people and animals shipped with the project, the `tiny` preset's base (see
`training/base_models/README.md`); `tiny-textures-32` beside it samples textures without a subject."""


LARGE_MODEL_PARAMETERS = 10_000_000
"""UNets this large sample under bf16/fp16 where the hardware runs it natively (the Space), and their Space
suggests a GPU; smaller ones stay in fp32, where they are fast anyway and equal fp32 sampling bit for bit."""

BUNDLED_BASE_MODEL_KEY = "bundled_base_model"
"""Card metadata naming a base model shipped with this project (e.g. `tiny-textures-32`): `base_model` takes
Hub ids only, and a bundled model has none, so the card names it here by its bundled name."""


ROLLOUT_SAMPLER_KEY = "rollout_sampler"
"""Card metadata recording the sampler a model was trained with (`Sampler.card_value`): the JPEG cut a model
shows depends on the sampler, and this is the one where the reward shaped it."""


@dataclass(frozen=True)
class Sampler:
    """A scheduler with its step count and, for DDIM, its eta: what decides which image a seed gives."""

    scheduler: str
    """DDPM, DDIM or PNDM."""
    num_inference_steps: int
    eta: float | None = None
    """DDIM's noise scale (0: deterministic, 1: as much noise as DDPM); None for the other schedulers."""

    @property
    def text(self) -> str:
        """`DDIM, 20 steps, eta 1` or `PNDM, 50 steps`."""
        eta = f", eta {self.eta:g}" if self.eta is not None else ""
        return f"{self.scheduler}, {self.num_inference_steps} steps{eta}"

    def card_value(self) -> dict:
        """The `ROLLOUT_SAMPLER_KEY` metadata, e.g. `{scheduler: DDIM, num_inference_steps: 20, eta: 1.0}`."""
        return {"scheduler": self.scheduler, "num_inference_steps": self.num_inference_steps} | (
            {"eta": float(self.eta)} if self.eta is not None else {}
        )

    @classmethod
    def from_card_value(cls, value: object) -> Sampler | None:
        """The sampler a card's metadata records; None when it records none, or one this project cannot run."""
        if not isinstance(value, dict) or str(value.get("scheduler", "")).upper() not in SCHEDULERS:
            return None
        scheduler, steps, eta = str(value["scheduler"]).upper(), value.get("num_inference_steps"), value.get("eta")
        if not isinstance(steps, int) or steps < 1 or (eta is not None and not isinstance(eta, int | float)):
            return None
        return cls(scheduler, steps, float(eta) if scheduler == "DDIM" and eta is not None else None)


DATA_NOTICE = "NOTICE"
"""A model folder's file with its training data's licence and attribution (the bundled emoji base has one)."""


def read_data_notice(folder: str | os.PathLike | None) -> str | None:
    """The `DATA_NOTICE` of a local model folder, which every card and Space built on that model repeats."""
    path = Path(folder) / DATA_NOTICE if folder else None
    return path.read_text(encoding="utf-8").strip() if path is not None and path.is_file() else None


class ModelLoadError(ValueError):
    """The model id or folder does not hold a loadable diffusers `UNet2DModel` pipeline."""


def scheduler_choice(name: str) -> SchedulerChoice:
    """Look a scheduler up by name, case-insensitively, with an error that lists the allowed names."""
    try:
        return SCHEDULERS[name.upper()]
    except KeyError:
        allowed = ", ".join(SCHEDULERS)
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {allowed}.") from None


def build_pipeline(unet: UNet2DModel, scheduler_config: dict, scheduler: str) -> DiffusionPipeline:
    """Wrap `unet` in the pipeline class for `scheduler`, with a scheduler made from the model's config."""
    choice = scheduler_choice(scheduler)
    return choice.pipeline_class(unet=unet, scheduler=choice.scheduler_class.from_config(scheduler_config))


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision for sampling: autocast to `dtype` on `device`, or plain float32 when `dtype` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def sample_images(
    pipeline: DiffusionPipeline,
    seeds: Sequence[int],
    num_inference_steps: int,
    *,
    eta: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> list[Image.Image]:
    """One image per seed, sampled together, each from its own CPU generator: image i starts from seeds[i]'s noise.

    A batched forward may pick other kernels than a batch of one, so an image sampled in a batch can differ from
    the same seed sampled alone by a byte or so of JPEG; sampled alone (`sample_image`, what the Space does, and
    `ddpo-eval --batch-size 1`), an image depends on its seed and settings only. Either way it is identical for
    the same batch layout, device, precision, torch thread count and library versions (thread count and
    kernels change floating-point sums). `eta` is passed to DDIM pipelines only (the others have none).
    """
    options = {"eta": eta} if eta is not None else {}
    with torch.inference_mode(), autocast(pipeline.device, autocast_dtype):
        return pipeline(
            batch_size=len(seeds),
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
            num_inference_steps=num_inference_steps,
            **options,
        ).images


def sample_image(
    pipeline: DiffusionPipeline,
    seed: int,
    num_inference_steps: int,
    *,
    eta: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Image.Image:
    """One image, sampled alone (batch 1) from its own CPU generator: it depends on its seed and settings only."""
    return sample_images(pipeline, [seed], num_inference_steps, eta=eta, autocast_dtype=autocast_dtype)[0]


def bundled_models() -> dict[str, Path]:
    """The models shipped with the project, by name (matched exactly: a name is never joined to a path)."""
    return {path.name: path for path in BUNDLED_MODELS_DIR.iterdir() if (path / "unet").is_dir()}


def resolve_model_path(model: str | os.PathLike) -> str:
    """Map the name of a bundled model to its folder; leave Hub ids and other paths unchanged."""
    return str(bundled_models().get(str(model), model))


def is_local_path(model: str | os.PathLike) -> bool:
    """Whether `model` names a file or folder on this machine, rather than a bundled model or a Hub repo id.

    The one test of "path or Hub id" that loading, the card and the Space share.
    """
    text = str(model)
    if text in bundled_models():
        return False
    if text.startswith(("/", ".", "~", "\\")) or text.count("/") > 1:
        return True
    try:
        return Path(text).exists()
    except OSError:  # e.g. a name longer than the file system allows: not a path here
        return False


def display_name(model: str | os.PathLike) -> str:
    """How a model is named to others (cards, published data, the Space): Hub ids and bundled names as they are,
    local folders by their own name only, so no machine path is published."""
    return Path(model).resolve().name if is_local_path(model) else str(model)


def hub_repo_id(model: str | os.PathLike | None) -> str | None:
    """`model` if it is a valid Hub repo id and neither a local path nor a bundled model; else None."""
    if not model or is_local_path(model) or str(model) in bundled_models():
        return None
    try:
        validate_repo_id(str(model))
    except HFValidationError:
        return None
    return str(model)


def hub_model_id(model: str | os.PathLike | None) -> str | None:
    """`model` if it names a Hub model with a namespace (`namespace/name`); None for local folders, bundled models
    and bare names. Only such ids are valid `base_model` card metadata and Space `models`."""
    repo_id = hub_repo_id(model)
    return repo_id if repo_id and "/" in repo_id else None


def fetch_pipeline_folder(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    hub_only: bool = False,
) -> Path:
    """Return a local `DDPMPipeline` folder for a bundled name, a local path or a Hub repo id.

    Hub repos are fetched with `snapshot_download` (only the files a pipeline needs), so Hub failures
    surface as huggingface_hub's specific exceptions, which we turn into one readable `ModelLoadError`.
    `hub_only` treats `model` as a Hub repo id and nothing else: no file-system lookup, whatever the text
    (the Space loads visitors' ids this way).
    """
    source = str(model) if hub_only else resolve_model_path(model)
    if hub_only:
        try:
            validate_repo_id(source)
        except HFValidationError:
            raise ModelLoadError("That is not a valid Hub repo id (expected 'user/model').") from None
    elif source != str(model) or is_local_path(source):
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(f"No such model folder: {source!r}.")
        if not (path / "unet" / "config.json").is_file() or not (path / "scheduler").is_dir():
            raise ModelLoadError(
                f"{source!r} is a folder but not a diffusers pipeline: it needs 'unet/config.json' and 'scheduler/'."
            )
        return path
    elif hub_repo_id(source) is None:
        raise ModelLoadError(f"{source!r} is neither an existing folder nor a valid Hub repo id.")
    try:
        folder = snapshot_download(
            source,
            revision=revision,
            token=token,
            allow_patterns=["model_index.json", "unet/*", "scheduler/*"],
        )
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise ModelLoadError(
            f"Model {source!r} was not found on the Hub (or it is private and no valid token was given)."
        ) from error
    except RevisionNotFoundError as error:
        raise ModelLoadError(f"Model {source!r} has no revision {revision!r}.") from error
    except LocalEntryNotFoundError as error:
        raise ModelLoadError(
            f"Could not download {source!r}: the Hugging Face Hub ({constants.ENDPOINT}) is unreachable from "
            "this machine and the model is not in the local cache. Pass a local pipeline folder instead, "
            "or set HF_ENDPOINT to a reachable Hub."
        ) from error
    folder = Path(folder)
    if not (folder / "unet" / "config.json").is_file():
        raise ModelLoadError(f"Hub repo {source!r} is not a diffusers pipeline: it has no 'unet/config.json'.")
    return folder


def load_unet_and_scheduler_config(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    hub_only: bool = False,
) -> tuple[UNet2DModel, dict]:
    """Load the UNet and the scheduler config of a `DDPMPipeline` (bundled name, folder or Hub id; see
    `fetch_pipeline_folder` for `hub_only`)."""
    folder = fetch_pipeline_folder(model, revision=revision, token=token, hub_only=hub_only)
    try:
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
        scheduler_config = DDPMScheduler.load_config(folder, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not load a diffusers UNet2DModel pipeline from {str(model)!r}: {error}") from error
    return unet, dict(scheduler_config)


def read_card_data(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    hub_only: bool = False,
) -> ModelCardData | None:
    """The metadata of a model's card (`README.md` of a folder or Hub repo); None when it has no card.

    `hub_only`: `model` is a Hub repo id, never looked up on the file system.
    """
    source = str(model) if hub_only else resolve_model_path(model)
    folder = Path(source)
    if not hub_only and folder.is_dir():
        card_path = folder / "README.md"
        if not card_path.is_file():
            return None
    else:
        try:
            card_path = hf_hub_download(source, "README.md", revision=revision, token=token)
        except EntryNotFoundError:
            return None
        except (HfHubHTTPError, LocalEntryNotFoundError) as error:
            raise ModelLoadError(f"Could not read the model card of {source!r}: {error}") from error
    return ModelCard.load(card_path, ignore_metadata_errors=True).data


def card_base_model(data: ModelCardData | None) -> str | None:
    """The `base_model` a card's metadata names: what a fine-tuned model is compared with.

    A card listing several base models (a merge) yields the first; a card of a model fine-tuned from a bundled
    model names it under `bundled_base_model`, read only when this install ships that model.
    """
    if data is None:
        return None
    base_model = data.base_model
    if isinstance(base_model, list):
        base_model = base_model[0] if base_model else None
    bundled = data.get(BUNDLED_BASE_MODEL_KEY)
    return base_model or (bundled if bundled in bundled_models() else None)


def card_rollout_sampler(data: ModelCardData | None) -> Sampler | None:
    """The sampler a card records the model was trained with (`ROLLOUT_SAMPLER_KEY`); None for other cards."""
    return Sampler.from_card_value(data.get(ROLLOUT_SAMPLER_KEY)) if data is not None else None


def read_base_model(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    hub_only: bool = False,
) -> str | None:
    """`card_base_model` of a model's card (see `read_card_data`); None without a card or a base model in it."""
    return card_base_model(read_card_data(model, revision=revision, token=token, hub_only=hub_only))
