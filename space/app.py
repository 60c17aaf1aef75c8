"""Gradio Space: sample a DDPO fine-tuned DDPM and its base model from the same seeds, and show JPEG sizes.

Each byte count shown is the length of the file a user downloads: images are encoded once with
`training.jpeg.encode_jpeg` (the training reward's encoder) and handed to Gradio as files, which it serves
unchanged; PIL images or arrays would be re-encoded by the gallery (as WebP by default).

The handler streams: each fine-tuned/base pair is shown as soon as it is sampled. Every image is sampled alone
(`pipelines.sample_image`, as `ddpo-eval --batch-size 1` does), so a seed gives the same picture whatever else is
requested.
Defaults fit the hardware: the default model's UNet pass is timed at start-up, and the steps and image count
proposed are those whose first pair and whole request finish within `FIRST_PAIR_SECONDS` and
`REQUEST_SECONDS`; large UNets sample under bf16 (fp16 on GPUs without bf16) where the hardware runs it.

Run `python space/app.py`; `MODEL_ID` (Hub id or local pipeline folder) picks the default model and
`ALLOWED_MODELS` (comma-separated Hub ids) optionally restricts what users may load. Visitors may name Hub
repo ids (checked before any lookup, and fetched from the Hub only) and the bundled models; a local folder
is served only when the operator named it, under its folder's name: no server path reaches a visitor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Literal, TypeVar

import gradio as gr
import torch
from diffusers import UNet2DModel
from gradio.processing_utils import save_bytes_to_cache
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from ddpo_hub.training.fidelity import fidelity_to_base, ssim_to_base, subject_figures
from ddpo_hub.training.jpeg import JPEG_QUALITY, JPEG_SUBSAMPLING, encode_jpeg
from ddpo_hub.training.judge import SubjectJudge, load_judge
from ddpo_hub.training.pipelines import (
    LARGE_MODEL_PARAMETERS,
    SCHEDULERS,
    TINY_BASE_MODEL,
    ModelLoadError,
    autocast,
    build_pipeline,
    bundled_models,
    fetch_pipeline_folder,
    is_local_path,
    load_unet_and_scheduler_config,
    read_base_model,
    read_data_notice,
    sample_image,
)

try:  # Present on Hugging Face Spaces: `spaces.GPU` lends a ZeroGPU device to the decorated function.
    import spaces
except ImportError:
    spaces = None


@dataclass(frozen=True)
class StepRange:
    """The inference steps the Space accepts for one scheduler, and the most it proposes by default."""

    minimum: int
    default: int
    maximum: int


STEP_RANGES: dict[str, StepRange] = {
    name: StepRange(minimum=SCHEDULERS[name].min_steps, default=default, maximum=maximum)
    for name, (default, maximum) in {
        # The 1000 training steps take minutes on a CPU Space; 100 DDPM steps already give recognisable images.
        "DDPM": (100, 1000),
        "DDIM": (50, 250),
        "PNDM": (50, 250),
    }.items()
}
DEFAULT_SCHEDULER = "DDIM"
MAX_IMAGES = 8
DEFAULT_IMAGES = 4
MAX_SEED = 2**31 - 1
CACHE_SIZE = 4
"""Models kept loaded: a fine-tuned model and its base for two comparisons."""
FIRST_PAIR_SECONDS = 35.0
"""The defaults show the first fine-tuned/base pair within this time (the issue asks 45 s on a free CPU Space)."""
REQUEST_SECONDS = 90.0
"""...and finish a default request within this time (asked: 120 s); both leave room for a busier machine."""
ASSUMED_GPU_SECONDS_PER_FORWARD = 0.05
"""The estimate for an unmeasured model on ZeroGPU, where no UNet pass can run outside a request."""
MAX_GPU_SECONDS = 300
"""The longest ZeroGPU lease a request asks for."""
MAX_REPO_PART_LENGTH = 96
"""The Hub's limit on a repo name (and here on its namespace too): longer ids are refused unread."""
MAX_REVISION_LENGTH = 200
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
"""Branches, tags (`epoch-10`), commit hashes and `refs/pr/N`: what git refs and the Hub allow, bar oddities."""
APP_ROOT = Path(__file__).resolve().parents[1]
"""The installed project (the checkout, or the Space's folder): never named to visitors."""
ExamplesCache = Literal["eager", "lazy", "off"]
CSS = "#gallery .fixed-height { min-height: 0; }"
"""Pass to `launch(css=CSS)`: the gallery is as tall as its rows (Gradio's default keeps 450 px for one row)."""

T = TypeVar("T")

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    """Seconds per UNet pass (batch 1) of a loaded model on the serving device: timed when the model is loaded,
    refreshed by every image sampled, and what estimates and defaults are computed from."""

    seconds_per_forward: float
    measured: bool = True

    def record(self, seconds: float, forwards: int) -> None:
        """Fold in one sampled image: the mean of the old figure and the new, so it follows a changing load."""
        latest = seconds / max(forwards, 1)
        self.seconds_per_forward = latest if not self.measured else (self.seconds_per_forward + latest) / 2
        self.measured = True


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: its UNet on the serving device, scheduler config, card's base model, precision."""

    unet: UNet2DModel
    scheduler_config: dict
    base_model: str | None
    autocast_dtype: torch.dtype | None
    throughput: Throughput
    fingerprint: str
    """Which weights these are (the pipeline folder, its Hub commit and its weight files' sizes and times)."""
    judge: SubjectJudge | None = None
    """The subject judge its folder ships (bundled bases do): it judges models fine-tuned from this one."""
    data_notice: str | None = None
    """Its training data's licence and attribution (`NOTICE` in its folder), shown wherever it is served."""

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype, "fp32")


@dataclass(frozen=True)
class ServedModel:
    """A model the Space agreed to serve: what visitors see, and what is loaded (never shown to them)."""

    label: str
    """The name in the dropdown, the table and messages: a Hub id, a bundled name or a local folder's name."""
    source: str
    """What is loaded: the Hub id, the bundled name or the server folder."""
    hub: bool
    """Loaded from the Hub only: `source` is never looked up on the file system."""


@dataclass(frozen=True)
class Request:
    """A checked request with its models loaded: the fine-tuned one and, when compared, its base."""

    label: str
    model: LoadedModel
    base_label: str | None
    base: LoadedModel | None
    runs: tuple[tuple[str, str | None, LoadedModel], ...]
    """(table label, caption role, model) per model sampled, in gallery order."""


@dataclass(frozen=True)
class Defaults:
    """What the controls propose: steps per scheduler and an image count that fit the measured speed."""

    steps: dict[str, int]
    images: int


def fitted_defaults(seconds_per_forward: float, models: int) -> Defaults:
    """The most steps (up to each scheduler's usual default) whose first pair of `models` images is shown within
    `FIRST_PAIR_SECONDS`, and the most images (up to `DEFAULT_IMAGES`) that finish within `REQUEST_SECONDS`."""
    per_seed = models * seconds_per_forward
    steps = {
        name: max(limits.minimum, min(limits.default, int(FIRST_PAIR_SECONDS / per_seed)))
        for name, limits in STEP_RANGES.items()
    }
    images = max(1, min(DEFAULT_IMAGES, int(REQUEST_SECONDS / (per_seed * steps[DEFAULT_SCHEDULER]))))
    return Defaults(steps=steps, images=images)


def sampling_dtype(unet: UNet2DModel, device: torch.device) -> torch.dtype | None:
    """The autocast precision for `unet` on `device`: bf16 (fp16 on GPUs without it) for large UNets where the
    hardware has native support, else None (fp32)."""
    if unet.num_parameters() < LARGE_MODEL_PARAMETERS:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cpu = torch.cpu
    if device.type == "cpu" and any(getattr(cpu, name, lambda: False)() for name in CPU_BF16_CHECKS):
        return torch.bfloat16
    return None


CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
"""torch's own probes of native bf16 on CPUs (AVX512-BF16, AMX): without them bf16 is emulated and slower."""


def time_forward(unet: UNet2DModel, autocast_dtype: torch.dtype | None) -> float:
    """Seconds of one batch-1 UNet pass as sampling runs it (after one warm-up pass, which sets up kernels)."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    sample = torch.randn(1, unet.config.in_channels, height, width, device=unet.device)
    timestep = torch.tensor([500], device=unet.device)
    with torch.inference_mode(), autocast(unet.device, autocast_dtype):
        unet(sample, timestep)
        if unet.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        unet(sample, timestep)
        if unet.device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def weights_fingerprint(folder: Path) -> str:
    """A short digest naming the pipeline folder and its weight files' sizes and times (a Hub snapshot folder
    carries its commit hash): cached example results belong to exactly these weights."""
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.glob("unet/*"))]
    return hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:16]


def display_name(folder: str, taken: Sequence[str] = ()) -> str:
    """A local folder's name for visitors (its last part, numbered if `taken`): the path stays on the server."""
    name = Path(folder).resolve().name or "model"
    label, number = name, 1
    while label in taken:
        number += 1
        label = f"{name}-{number}"
    return label


def hub_id_error(model: str) -> str | None:
    """Why `model` is not a Hub repo id the Space may fetch (None when it is one). Reads nothing on disk."""
    parts = model.split("/")
    if len(model) > 2 * MAX_REPO_PART_LENGTH + 1 or any(len(part) > MAX_REPO_PART_LENGTH for part in parts):
        return (
            f"A Hub model id ('user/model') has at most {MAX_REPO_PART_LENGTH} characters in each part; "
            f"the one entered has {len(model):,} characters."
        )
    try:
        if not model.isascii():
            raise HFValidationError("not ASCII")
        validate_repo_id(model)
    except HFValidationError:
        return (
            "Enter a Hub model id such as 'user/model' (letters, digits, '-', '_' and '.'; no '..' or '--'); "
            "server folders are not served."
        )
    return None


_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[/\\][^\s'\"`,;)]+")


def scrub_paths(message: str, folders: Mapping[str, str] | None = None) -> str:
    """`message` as a visitor may see it: served `folders` (path -> label) by their labels, other server paths
    hidden. Pure string work: nothing is looked up on disk."""
    replacements = dict(folders or {})
    replacements[constants.HF_HUB_CACHE] = "the model cache"
    replacements[str(APP_ROOT)] = "the app"
    replacements[tempfile.gettempdir()] = "a temporary folder"
    for path in sorted(replacements, key=len, reverse=True):
        message = message.replace(path, replacements[path])
    return _ABSOLUTE_PATH.sub("<a server path>", message)


def visitor_message(error: ModelLoadError, label: str) -> str | None:
    """A sentence a visitor can act on for load failures whose full text is for the operator (the Hub being
    unreachable or failing, a library's loading error); None when the error's own text already is one."""
    cause = error.__cause__
    if isinstance(cause, LocalEntryNotFoundError):
        return f"{label} cannot be fetched right now: the Hub does not answer this Space. Try again in a while."
    if isinstance(cause, RepositoryNotFoundError | GatedRepoError | RevisionNotFoundError):
        return None
    if isinstance(cause, HfHubHTTPError):
        return f"The Hub answered this Space's request for {label} with an error. Try again in a while."
    if isinstance(cause, OSError | ValueError):
        return f"{label} could not be loaded: its files are not a diffusers UNet2DModel pipeline this Space can run."
    return None


class ModelCache:
    """Loaded models keyed by (model id, revision); beyond `max_models` the least recently used is dropped.

    Loading holds the lock, so simultaneous first requests for a model download and load it once. Each model's
    UNet pass is timed as it loads (`time_forward`) unless `measure` is False (ZeroGPU: no GPU outside requests).
    Every UNet pass, timed or sampled, runs on `sampler`, one thread kept for the app's life: a CPU thread pool
    (OpenMP, oneDNN) is set up per calling thread, and Gradio runs each step of a streaming handler on whichever
    worker thread is free, which cost 10-20% on the celebahq-256 architecture. On 2 cores, two requests' images
    sampled one after the other also finish sooner than sampled at once.
    """

    def __init__(self, max_models: int, device: torch.device, *, measure: bool = True):
        self.max_models = max_models
        self.device = device
        self.measure = measure
        self.sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddpo-space-sampler")
        self._models: OrderedDict[tuple[str, str | None, bool], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def peek(self, model_id: str, revision: str | None = None, *, hub_only: bool = False) -> LoadedModel | None:
        """The model if it is loaded; never loads (estimates ask this, as a visitor types)."""
        return self._models.get((model_id, revision, hub_only))

    def get(self, model_id: str, revision: str | None = None, *, hub_only: bool = False) -> LoadedModel:
        """`hub_only`: `model_id` is a Hub repo id, fetched from the Hub and never looked up on disk."""
        key = (model_id, revision, hub_only)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            folder = fetch_pipeline_folder(model_id, revision=revision, hub_only=hub_only)
            unet, scheduler_config = load_unet_and_scheduler_config(folder)
            unet = unet.to(self.device).eval()
            dtype = sampling_dtype(unet, self.device)
            throughput = (
                Throughput(self.sampler.submit(time_forward, unet, dtype).result())
                if self.measure
                else Throughput(ASSUMED_GPU_SECONDS_PER_FORWARD, measured=False)
            )
            loaded = LoadedModel(
                unet=unet,
                scheduler_config=scheduler_config,
                base_model=read_base_model(model_id, revision=revision, hub_only=hub_only),
                autocast_dtype=dtype,
                throughput=throughput,
                fingerprint=weights_fingerprint(folder),
                judge=load_judge(folder),
                data_notice=read_data_notice(folder),
            )
            self._models[key] = loaded
            if len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return loaded


def save_jpeg(image: Image.Image, name: str, folder: str) -> tuple[str, int]:
    """Encode `image` once and store the bytes where Gradio serves files from unchanged: (path, bytes)."""
    data = encode_jpeg(image)
    return save_bytes_to_cache(data, name, cache_dir=folder), len(data)


def check_request(scheduler: str, num_inference_steps: int | None, num_images: int | None, seed: int | None) -> None:
    """Refuse settings the Space does not serve, with a sentence the user can act on (never clamped)."""
    if scheduler not in STEP_RANGES:
        raise gr.Error(f"Unknown scheduler {scheduler!r}: choose one of {', '.join(STEP_RANGES)}.")
    steps = STEP_RANGES[scheduler]
    if num_inference_steps is None or not steps.minimum <= num_inference_steps <= steps.maximum:
        raise gr.Error(
            f"{scheduler} takes between {steps.minimum} and {steps.maximum} inference steps here; "
            f"you asked for {num_inference_steps}."
        )
    if num_images is None or not 1 <= num_images <= MAX_IMAGES:
        raise gr.Error(f"Generate between 1 and {MAX_IMAGES} images at a time; you asked for {num_images}.")
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise gr.Error(f"The seed must be a whole number between 0 and {MAX_SEED}.")


def size_caption(role: str | None, seed: int, num_bytes: int) -> str:
    """`seed 3, base: 4.321 kB`: the seed, the model and the exact size (bytes / 1000, the reward's unit).

    Short, so that it fits under a thumbnail of a four-column gallery (Gradio cuts longer captions).
    """
    return f"seed {seed}{f', {role}' if role else ''}: {num_bytes / 1000:.3f} kB"


def summarize(
    model_id: str,
    sizes: Sequence[int],
    base_model: str | None,
    base_sizes: Sequence[int],
    fidelity: dict[str, float] | None = None,
) -> str:
    """One line: mean JPEG size, how much smaller than the base model's from the same seeds, and at what cost."""
    line = f"**{model_id}**: mean JPEG size {mean(sizes):,.0f} bytes over {len(sizes)} image(s)"
    if not base_sizes:
        return line + "."
    change = 100 * (1 - mean(sizes) / mean(base_sizes))
    direction = "smaller" if change >= 0 else "larger"
    line = (
        f"{line}, {abs(change):.1f}% {direction} than the base model **{base_model}** "
        f"(mean {mean(base_sizes):,.0f} bytes from the same seeds)"
    )
    if not fidelity:
        return line + "."
    costs = [f"same-seed SSIM to base {fidelity['ssim_to_base']:.2f}"]
    if "diversity_vs_base" in fidelity:
        costs.append(f"diversity {fidelity['diversity_vs_base']:.2f}x")
        costs.append(f"colour spread {fidelity['colour_spread_vs_base']:.2f}x the base's")
    if "edge_sharpness_vs_base" in fidelity:
        costs.append(f"edge sharpness {fidelity['edge_sharpness_vs_base']:.2f}x")
    if "subject_kept" in fidelity:
        costs.append(f"the base's judge sees the same subject in {fidelity['subject_kept']:.0%} of the seeds")
    if "kid_to_base" in fidelity:
        costs.append(f"KID to base {fidelity['kid_to_base']:.3f}")
    return f"{line}; {', '.join(costs)}."


def fidelity_figures(
    images: Sequence[Image.Image], base_images: Sequence[Image.Image], judge: SubjectJudge | None = None
) -> dict[str, float]:
    """The fidelity figures of `training.fidelity` for one request (diversity and KID need two images or more),
    with the subject figures where the base ships a `judge`."""
    if len(images) >= 2:
        return fidelity_to_base(images, base_images, judge)
    figures = {"ssim_to_base": ssim_to_base(images, base_images)}
    return figures | subject_figures(images, base_images, judge) if judge is not None else figures


def duration_text(seconds: float) -> str:
    """`under 1 s`, `45 s`, `3.2 min` or `1.5 h`."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate_text(model: LoadedModel | None, num_inference_steps: int, num_images: int, models: int) -> str:
    """The time a request will take, from the model's measured UNet pass, before it starts."""
    if model is None:
        return "Estimated time: known once this model is loaded (it is timed as it loads)."
    forwards = num_inference_steps * num_images * models
    speed = model.throughput
    how = f"{'measured' if speed.measured else 'assumed'} on this Space's {model.unet.device.type.upper()}"
    return (
        f"Estimated time: about {duration_text(forwards * speed.seconds_per_forward)} "
        f"({forwards:,} UNet passes at {speed.seconds_per_forward:.3g} s each, {how}, {model.precision})."
    )


def pairs_summary(
    request: Request, images: dict[str, list[Image.Image]], sizes: dict[str, list[int]], compare_with_base: bool
) -> str:
    """The summary of the seeds sampled so far, every model's image of each (computed when a seed completes)."""
    base_images = images[request.base_label] if request.base else []
    summary = summarize(
        request.label,
        sizes[request.label],
        request.base_label,
        sizes[request.base_label] if request.base else [],
        fidelity_figures(images[request.label], base_images, request.base.judge) if request.base else None,
    )
    if compare_with_base and not request.model.base_model:
        summary += " Its model card names no `base_model`, so there is nothing to compare with."
    return summary


def timed(function: Callable[..., T], *args, **kwargs) -> tuple[T, float]:
    """`function(*args, **kwargs)` and the seconds it ran (measured where it runs, so waiting in line is not)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


@contextmanager
def examples_cache_folder(key: str) -> Iterator[None]:
    """Point Gradio's example cache (read as `gr.Examples` is built) at a folder of its own for `key`, so
    results cached for other models, weights or examples are never shown for these."""
    previous = os.environ.get("GRADIO_EXAMPLES_CACHE")
    root = Path(previous or ".gradio/cached_examples")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / hashlib.sha256(key.encode()).hexdigest()[:16])
    try:
        yield
    finally:
        if previous is None:
            del os.environ["GRADIO_EXAMPLES_CACHE"]
        else:
            os.environ["GRADIO_EXAMPLES_CACHE"] = previous


def build_demo(
    model_id: str | None = None,
    *,
    allowed_models: Sequence[str] = (),
    cache_size: int = CACHE_SIZE,
    device: torch.device | None = None,
    concurrency_limit: int = 2,
    max_queue_size: int = 32,
    examples_cache: ExamplesCache = "eager",
    zero_gpu: bool = False,
) -> gr.Blocks:
    """The Space's UI and its `/generate` API.

    `model_id` is the default model (a Hub id or local folder; the bundled tiny model when None). When
    `allowed_models` is given, users may only pick those models (and the default); a model's base model
    named in its card is always allowed with it. Visitors may otherwise name Hub repo ids and the bundled
    models; server folders are served only when the operator named them here, and shown by their names.
    The default model is loaded and timed here, and the controls' defaults fitted to it. `examples_cache`:
    the seeded examples (one per scheduler) are sampled at launch ("eager"), at first use ("lazy") or not
    shown. `zero_gpu`: `generate` runs under `spaces.GPU` for a duration derived from the request.
    """
    bundled = frozenset(bundled_models())
    local: dict[str, str] = {}
    """Label -> server folder, for the folders the operator named: the only folders a visitor can reach."""
    shown_as: dict[str, str] = {}
    """Those folders' paths as given and resolved -> label: what error messages show instead."""

    def operator_model(model: str) -> str:
        """The label of a model the operator named; a local folder gets a display name."""
        if model in bundled or not is_local_path(model):
            return model
        label = display_name(model, taken=[*local, *bundled])
        local[label] = model
        shown_as[model] = shown_as[str(Path(model).resolve())] = label
        return label

    default_label = operator_model(model_id or TINY_BASE_MODEL.name)
    allowed = {default_label, *map(operator_model, allowed_models)} if allowed_models else set()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = ModelCache(cache_size, device, measure=not zero_gpu)

    def resolve_model(model: str, revision: str | None) -> ServedModel:
        """What a visitor's model id names, or a `gr.Error`; no file-system call for anything but the
        operator's own models (the lookups below are of in-memory names, and Hub ids go to the Hub only)."""
        if model in local:
            served = ServedModel(model, local[model], hub=False)
        elif allowed and model not in allowed:
            raise gr.Error(f"This Space only serves these models: {', '.join(sorted(allowed))}.")
        elif model in bundled:
            served = ServedModel(model, model, hub=False)
        elif error := hub_id_error(model):
            raise gr.Error(error)
        else:
            served = ServedModel(model, model, hub=True)
        if revision and not served.hub:
            raise gr.Error(f"{served.label} is one of this Space's own models: revisions only apply to Hub repos.")
        if revision and (len(revision) > MAX_REVISION_LENGTH or not _REVISION.fullmatch(revision) or ".." in revision):
            raise gr.Error(
                "Enter a revision as a branch, a tag (such as epoch-10) or a commit hash: letters, digits, "
                f"'.', '_', '-' and '/', at most {MAX_REVISION_LENGTH} characters."
            )
        return served

    def resolve_base(base_model: str, model: ServedModel) -> ServedModel | None:
        """The base a card names: a Hub id or bundled model, or (in the card of the operator's own local
        model only) a folder, shown by its name. None when the Space does not serve it."""
        if base_model in bundled:
            return ServedModel(base_model, base_model, hub=False)
        if not hub_id_error(base_model):
            return ServedModel(base_model, base_model, hub=True)
        if not model.hub and model.source not in bundled and is_local_path(base_model):
            return ServedModel(display_name(base_model, taken=[*local, *bundled]), base_model, hub=False)
        return None

    def load(served: ServedModel, revision: str | None = None) -> LoadedModel:
        """The loaded model, or a `gr.Error` a visitor can act on (the operator's details go to the log)."""
        try:
            return cache.get(served.source, revision, hub_only=served.hub)
        except ModelLoadError as error:
            logger.warning("Could not load %s: %s", served.label, error)
            folders = shown_as if served.hub else {served.source: served.label, **shown_as}
            raise gr.Error(visitor_message(error, served.label) or scrub_paths(str(error), folders)) from error

    def prepare(model_id: str, revision: str, compare_with_base: bool) -> Request:
        """Resolve and load the request's models, or raise the `gr.Error` that says why not."""
        model_id = (model_id or "").strip() or default_label
        revision = (revision or "").strip() or None
        served = resolve_model(model_id, revision)
        label = f"{served.label}@{revision}" if revision else served.label
        model = load(served, revision)
        if not (compare_with_base and model.base_model):
            return Request(label, model, None, None, runs=((label, None, model),))
        base_served = resolve_base(model.base_model, served)
        untick = f"untick 'Compare with base model' to sample {label} alone."
        if base_served is None:
            raise gr.Error(
                f"The card of {label} names a base model that is neither a Hub repo id nor a model of this "
                f"Space: {untick}"
            )
        try:
            base = load(base_served)
        except gr.Error as error:
            raise gr.Error(f"{error.message} It is the base model named in the card of {label}: {untick}") from error
        if base.unet.config.sample_size != model.unet.config.sample_size:
            raise gr.Error(
                f"The base model named in the card of {label}, {base_served.label}, makes images of another size, "
                f"so they cannot be compared: {untick}"
            )
        runs = ((label, "fine-tuned", model), (base_served.label, "base", base))
        return Request(label, model, base_served.label, base, runs)

    def check_and_load(
        model_id: str,
        scheduler: str,
        num_inference_steps: int,
        num_images: int,
        seed: int,
        revision: str = "",
        compare_with_base: bool = True,
    ) -> None:
        """The page's first step: a refused request raises here, with no outputs, so the results shown stay."""
        check_request(scheduler, num_inference_steps, num_images, seed)
        prepare(model_id, revision, compare_with_base)

    def generate(
        model_id: str,
        scheduler: str,
        num_inference_steps: int,
        num_images: int,
        seed: int,
        revision: str = "",
        compare_with_base: bool = True,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it by this default)
    ) -> Iterator[tuple[list[tuple[str, str]], list[list], str]]:
        """Sample seeds seed, seed+1, ... and yield, after each image, every JPEG file so far with its byte size.

        Each seed's fine-tuned image and its base model's are sampled back to back, so a pair is shown as soon as
        it exists; the last value (what gradio_client's `predict` returns) holds them all.
        """
        check_request(scheduler, num_inference_steps, num_images, seed)
        request = prepare(model_id, revision, compare_with_base)
        seeds = list(range(seed, seed + num_images))
        pipelines = {}
        for _, _, run_model in request.runs:
            pipelines[id(run_model)] = pipeline = build_pipeline(run_model.unet, run_model.scheduler_config, scheduler)
            pipeline.set_progress_bar_config(disable=True)
        total = len(seeds) * len(request.runs)

        gallery_items, rows = [], []
        summary = f"Sampling {request.base_label}'s image of the first seed."
        images: dict[str, list[Image.Image]] = {label: [] for label, _, _ in request.runs}
        sizes: dict[str, list[int]] = {label: [] for label, _, _ in request.runs}
        for seed_value in seeds:
            for run_label, role, run_model in request.runs:
                progress((len(gallery_items), total), desc=f"seed {seed_value}, {role or run_label}", unit="images")
                pipeline, dtype = pipelines[id(run_model)], run_model.autocast_dtype
                image, seconds = cache.sampler.submit(
                    timed, sample_image, pipeline, seed_value, num_inference_steps, autocast_dtype=dtype
                ).result()
                run_model.throughput.record(seconds, num_inference_steps)
                stem = f"{run_label.replace('/', '--').replace('@', '-')}-{scheduler}-seed{seed_value}.jpg"
                path, num_bytes = save_jpeg(image, stem, gallery.GRADIO_CACHE)
                images[run_label].append(image)
                sizes[run_label].append(num_bytes)
                gallery_items.append((path, size_caption(role, seed_value, num_bytes)))
                rows.append([run_label, scheduler, seed_value, num_bytes])
                if run_label == request.runs[-1][0]:  # the seed's last image: its figures are complete
                    summary = pairs_summary(request, images, sizes, compare_with_base)
                if left := total - len(gallery_items):
                    seconds_left = left * num_inference_steps * request.model.throughput.seconds_per_forward
                    yield gallery_items, rows, f"{summary} *Still sampling: about {duration_text(seconds_left)} to go.*"
                else:
                    yield gallery_items, rows, summary

    def gpu_seconds(
        model_id: str,
        scheduler: str,
        num_inference_steps: int,
        num_images: int,
        seed: int,
        revision: str = "",
        compare_with_base: bool = True,
        progress: gr.Progress | None = None,
    ) -> int:
        """The ZeroGPU lease `generate` asks for: twice the estimate at the default model's speed, plus loading."""
        speed = default_model.throughput.seconds_per_forward
        forwards = num_inference_steps * num_images * (2 if compare_with_base else 1)
        return int(min(MAX_GPU_SECONDS, 30 + 2 * forwards * speed))

    if zero_gpu and spaces is not None:
        generate = spaces.GPU(duration=gpu_seconds)(generate)

    default_served = resolve_model(default_label, None)
    try:
        default_model = load(default_served)
    except gr.Error as error:
        raise ModelLoadError(f"The default model {default_label} cannot be served: {error.message}") from error
    compared = 2 if default_model.base_model else 1
    defaults = fitted_defaults(default_model.throughput.seconds_per_forward, compared)
    logger.info(
        "%s: %.3f s per UNet pass (%s, %s); defaults %s steps, %d images",
        default_label,
        default_model.throughput.seconds_per_forward,
        device,
        default_model.precision,
        defaults.steps,
        defaults.images,
    )

    def steps_for(scheduler: str) -> gr.Number:
        """The steps box for `scheduler`: its bounds (out-of-range values are refused, not clamped) and default."""
        steps = STEP_RANGES.get(scheduler, STEP_RANGES[DEFAULT_SCHEDULER])
        return gr.Number(
            minimum=steps.minimum,
            maximum=steps.maximum,
            value=defaults.steps.get(scheduler, steps.default),
            info=f"{scheduler}: {steps.minimum} to {steps.maximum}.",
        )

    def estimate(model_id: str, revision: str, num_inference_steps: float, num_images: float, compare: bool) -> str:
        """The estimate line for the current settings, from the models already loaded (nothing is loaded here)."""
        model_id = (model_id or "").strip() or default_label
        revision = (revision or "").strip() or None
        source = local.get(model_id, model_id)
        hub = model_id not in local and model_id not in bundled
        model = cache.peek(source, revision, hub_only=hub)
        if not num_inference_steps or not num_images:
            return ""
        models = 2 if compare and model is not None and model.base_model else 1
        return estimate_text(model, int(num_inference_steps), int(num_images), models)

    base_note = (
        f"Also samples its base model, {default_model.base_model}, from the same seeds."
        if default_model.base_model
        else "This model's card names no base model: only its own images are shown."
    )
    base_folder = bundled_models().get(default_model.base_model or "")
    notices = [notice for notice in (default_model.data_notice, read_data_notice(base_folder)) if notice]
    with gr.Blocks(title="DDPO JPEG compressibility", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DDPO: diffusion images that compress well\n"
            "A DDPM fine-tuned with reinforcement learning (DDPO) so its samples make smaller JPEG files, "
            "and, when its card names one, its base model from the same seeds. Sizes are the exact files you "
            f"download (JPEG quality {JPEG_QUALITY}, {JPEG_SUBSAMPLING}), measured like the training reward."
            + "".join(f"\n\n*{notice}*" for notice in notices)
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                model_box = gr.Dropdown(
                    choices=sorted(allowed or {default_label}),
                    value=default_label,
                    allow_custom_value=True,
                    label="Model",
                    info="A Hub repo id holding a diffusers DDPMPipeline.",
                )
                revision_box = gr.Textbox(value="", label="Revision", placeholder="main, or a tag such as epoch-10")
                scheduler_radio = gr.Radio(list(STEP_RANGES), value=DEFAULT_SCHEDULER, label="Scheduler")
                # A number box, not a slider: a slider clamps what is typed into it and runs that silently.
                # No bounds here (the page sets the scheduler's at load): the API checks per scheduler.
                steps_box = gr.Number(
                    value=defaults.steps[DEFAULT_SCHEDULER],
                    precision=0,
                    step=1,
                    label="Inference steps",
                    elem_id="steps",
                )
                images_slider = gr.Slider(
                    minimum=1,
                    maximum=MAX_IMAGES,
                    value=defaults.images,
                    step=1,
                    precision=0,
                    label="Images",
                    elem_id="num-images",
                )
                seed_box = gr.Number(value=0, minimum=0, maximum=MAX_SEED, precision=0, label="Seed")
                compare_box = gr.Checkbox(value=True, label="Compare with base model", info=base_note)
                estimate_md = gr.Markdown(elem_id="estimate")
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=4):
                gr.Markdown("**Samples**: seed by seed, the fine-tuned model's image, then its base model's.")
                gallery = gr.Gallery(
                    show_label=False,
                    elem_id="gallery",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                )
                summary_md = gr.Markdown(label="Summary", elem_id="summary")
                table = gr.Dataframe(
                    headers=["model", "scheduler", "seed", "bytes"],
                    datatype=["str", "str", "number", "number"],
                    interactive=False,
                    label="JPEG sizes",
                )
        inputs = [model_box, scheduler_radio, steps_box, images_slider, seed_box, revision_box, compare_box]
        if examples_cache != "off":
            examples = [
                [default_label, name, defaults.steps[name], defaults.images, seed, "", True]
                for seed, name in enumerate(STEP_RANGES)
            ]
            key = json.dumps([default_served.source, default_model.fingerprint, examples, str(device)])
            with examples_cache_folder(key):
                gr.Examples(
                    examples,
                    inputs=inputs,
                    outputs=[gallery, table, summary_md],
                    fn=generate,
                    cache_examples=True,
                    cache_mode=examples_cache,
                    label="Examples: sampled once, shown at once",
                    elem_id="examples",
                    visible_columns=[1, 2, 3, 4],  # scheduler, steps, images, seed: the rest is the default's
                )
        estimate_inputs = [model_box, revision_box, steps_box, images_slider, compare_box]
        for control in estimate_inputs:
            control.change(estimate, estimate_inputs, estimate_md, queue=False, api_visibility="private")
        scheduler_radio.change(steps_for, scheduler_radio, steps_box, queue=False, api_visibility="private")
        demo.load(steps_for, scheduler_radio, steps_box, queue=False, api_visibility="private")
        demo.load(estimate, estimate_inputs, estimate_md, queue=False, api_visibility="private")
        button.click(check_and_load, inputs, None, api_visibility="private").success(
            generate, inputs=inputs, outputs=[gallery, table, summary_md], api_name="generate"
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo


def allow_list(value: str) -> list[str]:
    """Parse `ALLOWED_MODELS`: comma- or whitespace-separated model ids."""
    return value.replace(",", " ").split()


def match_threads() -> int:
    """Give torch one thread per core this process may use (a container's CPU set, not the host's count)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    return cores


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    match_threads()
    demo = build_demo(
        os.environ.get("MODEL_ID") or None,
        allowed_models=allow_list(os.environ.get("ALLOWED_MODELS", "")),
        # ZeroGPU Spaces set SPACES_ZERO_GPU; elsewhere `spaces.GPU` is not needed.
        zero_gpu=spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in {"1", "true"},
    )
    demo.launch(css=CSS)
