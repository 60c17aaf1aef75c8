"""The Space's request path: loaded models, their speed, the defaults fitted to it, and the streaming handler.

Each byte count shown is the length of the file a user downloads: images are encoded once with
`training.jpeg.encode_jpeg` (the training reward's encoder) and written as files into the cache folder the
app names, from which Gradio serves them unchanged; PIL images or arrays would be re-encoded by the gallery
(as WebP by default).

`generate` streams: each fine-tuned/base pair is shown as soon as it is sampled. Every image is sampled alone
(`pipelines.sample_image`, as `ddpo-eval --batch-size 1` does), so a seed gives the same picture whatever else is
requested. A model whose card records the sampler it was trained with (`rollout_sampler`) opens on it, since the
JPEG cut it shows depends on the sampler; other models open on DDIM at eta 0. Defaults fit the hardware: the
default model's UNet pass is timed at start-up (the median of several passes) and again by every image sampled,
and the steps and image count proposed are those whose first pair and whole request finish within
`FIRST_PAIR_SECONDS` and `REQUEST_SECONDS`; large UNets sample under bf16 (fp16 on GPUs without bf16) where the
hardware runs it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, median
from typing import TypeVar

import gradio as gr
import torch
from diffusers import UNet2DModel
from PIL import Image

from ddpo_hub.space.access import Access, ServedModel
from ddpo_hub.training.fidelity import describe, fidelity_to_base, ssim_to_base, subject_figures
from ddpo_hub.training.humanize import duration_text
from ddpo_hub.training.jpeg import encode_jpeg
from ddpo_hub.training.judge import SubjectJudge, load_judge
from ddpo_hub.training.pipelines import (
    LARGE_MODEL_PARAMETERS,
    SCHEDULERS,
    ModelLoadError,
    Sampler,
    autocast,
    build_pipeline,
    card_base_model,
    card_rollout_sampler,
    fetch_pipeline_folder,
    load_unet_and_scheduler_config,
    read_card_data,
    read_data_notice,
    sample_image,
)


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
TIMED_PASSES = 5
"""UNet passes timed when a model loads (after a warm-up pass): their median is its first speed figure."""
RECENT_TIMINGS = 9
"""Per-pass times kept (the start-up passes, then one per image sampled): the speed is their median, so it follows
a changing load and no single slow pass sets it."""
CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
"""torch's own probes of native bf16 on CPUs (AVX512-BF16, AMX): without them bf16 is emulated and slower."""

T = TypeVar("T")
Update = tuple[list[tuple[str, str]], list[list], str]
"""What `generate` yields: the gallery's (JPEG file, caption) items, the table's rows and the summary."""

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    """Seconds per UNet pass (batch 1) of a loaded model on the serving device: timed when the model is loaded,
    refreshed by every image sampled, and what estimates and defaults are computed from."""

    timings: deque[float]
    """The latest per-pass times (`RECENT_TIMINGS` at most)."""
    measured: bool = True

    @classmethod
    def of(cls, timings: Sequence[float], *, measured: bool = True) -> Throughput:
        return cls(deque(timings, maxlen=RECENT_TIMINGS), measured)

    @property
    def seconds_per_forward(self) -> float:
        return median(self.timings)

    def record(self, seconds: float, forwards: int) -> None:
        """Fold in one sampled image (`seconds` for `forwards` passes); an assumed figure is dropped."""
        if not self.measured:
            self.timings.clear()
        self.timings.append(seconds / max(forwards, 1))
        self.measured = True


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: its UNet on the serving device, scheduler config, card's base model, precision."""

    unet: UNet2DModel
    scheduler_config: dict
    base_model: str | None
    trained: Sampler | None
    """The sampler its card records it was trained with, when the Space can run it."""
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
    """What the controls propose: the scheduler and eta, steps per scheduler and an image count."""

    steps: dict[str, int]
    images: int
    scheduler: str = DEFAULT_SCHEDULER
    eta: float = 0.0
    trained: Sampler | None = None
    """The sampler the default model was trained with, which the scheduler, its steps and eta are."""


def fitted_defaults(seconds_per_forward: float, models: int, trained: Sampler | None = None) -> Defaults:
    """The `trained` sampler where there is one; otherwise the most steps (up to each scheduler's usual default)
    whose first pair of `models` images is shown within `FIRST_PAIR_SECONDS`. Then the most images (up to
    `DEFAULT_IMAGES`) that finish within `REQUEST_SECONDS` at the default scheduler's steps."""
    per_seed = models * seconds_per_forward
    steps = {
        name: max(limits.minimum, min(limits.default, int(FIRST_PAIR_SECONDS / per_seed)))
        for name, limits in STEP_RANGES.items()
    }
    scheduler, eta = DEFAULT_SCHEDULER, 0.0
    if trained is not None:  # as trained, however long it takes: fewer steps would show another cut
        scheduler, eta = trained.scheduler, trained.eta or 0.0
        steps[scheduler] = trained.num_inference_steps
    images = max(1, min(DEFAULT_IMAGES, int(REQUEST_SECONDS / (per_seed * steps[scheduler]))))
    return Defaults(steps=steps, images=images, scheduler=scheduler, eta=eta, trained=trained)


def servable(sampler: Sampler | None) -> Sampler | None:
    """`sampler` if the Space accepts its settings (a scheduler it offers, steps in range, eta in [0, 1])."""
    if sampler is None or sampler.scheduler not in STEP_RANGES:
        return None
    steps = STEP_RANGES[sampler.scheduler]
    in_range = steps.minimum <= sampler.num_inference_steps <= steps.maximum and 0 <= (sampler.eta or 0) <= 1
    return sampler if in_range else None


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


def time_forwards(unet: UNet2DModel, autocast_dtype: torch.dtype | None, passes: int = TIMED_PASSES) -> list[float]:
    """Seconds of each of `passes` batch-1 UNet passes as sampling runs them, after one warm-up pass (which sets
    up kernels)."""
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    sample = torch.randn(1, unet.config.in_channels, height, width, device=unet.device)
    timestep = torch.tensor([500], device=unet.device)
    timings = []
    with torch.inference_mode(), autocast(unet.device, autocast_dtype):
        for index in range(passes + 1):
            start = time.perf_counter()
            unet(sample, timestep)
            if unet.device.type == "cuda":
                torch.cuda.synchronize()
            if index:
                timings.append(time.perf_counter() - start)
    return timings


def weights_fingerprint(folder: Path) -> str:
    """A short digest naming the pipeline folder and its weight files' sizes and times (a Hub snapshot folder
    carries its commit hash): cached example results belong to exactly these weights."""
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.glob("unet/*"))]
    return hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:16]


class ModelCache:
    """Loaded models keyed by (model id, revision); beyond `max_models` the least recently used is dropped.

    Loading holds the lock, so simultaneous first requests for a model download and load it once. Each model's
    UNet pass is timed as it loads (`time_forwards`) unless `measure` is False (ZeroGPU: no GPU outside requests).
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
                Throughput.of(self.sampler.submit(time_forwards, unet, dtype).result())
                if self.measure
                else Throughput.of([ASSUMED_GPU_SECONDS_PER_FORWARD], measured=False)
            )
            card = read_card_data(model_id, revision=revision, hub_only=hub_only)
            loaded = LoadedModel(
                unet=unet,
                scheduler_config=scheduler_config,
                base_model=card_base_model(card),
                trained=servable(card_rollout_sampler(card)),
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


@dataclass(frozen=True)
class Space:
    """What every request reads: who may load what, the loaded models, and the default model with its defaults."""

    access: Access
    cache: ModelCache
    default: ServedModel
    default_model: LoadedModel
    defaults: Defaults
    """Fitted at start-up: the API's defaults and the examples' settings."""

    def refitted_defaults(self) -> Defaults:
        """The defaults at the default model's speed now (requests keep timing it): what a page opens on."""
        model = self.default_model
        return fitted_defaults(model.throughput.seconds_per_forward, 2 if model.base_model else 1, model.trained)


def load(access: Access, cache: ModelCache, served: ServedModel, revision: str | None = None) -> LoadedModel:
    """The loaded model, or a `gr.Error` a visitor can act on (the operator's details go to the log)."""
    try:
        return cache.get(served.source, revision, hub_only=served.hub)
    except ModelLoadError as error:
        logger.warning("Could not load %s: %s", served.label, error)
        raise access.load_error(error, served) from error


def open_space(access: Access, cache: ModelCache) -> Space:
    """Load and time the default model and fit the defaults to it; a default that cannot be served is an error."""
    default = access.resolve(access.default_label, None)
    try:
        model = load(access, cache, default)
    except gr.Error as error:
        raise ModelLoadError(f"The default model {default.label} cannot be served: {error.message}") from error
    defaults = fitted_defaults(model.throughput.seconds_per_forward, 2 if model.base_model else 1, model.trained)
    logger.info(
        "%s: %.3f s per UNet pass (%s, %s); defaults %s steps, %d images, %s",
        default.label,
        model.throughput.seconds_per_forward,
        cache.device,
        model.precision,
        defaults.steps,
        defaults.images,
        f"as trained ({model.trained.text})" if model.trained else "no trained sampler recorded",
    )
    return Space(access, cache, default, model, defaults)


def prepare(space: Space, model_id: str, revision: str, compare_with_base: bool) -> Request:
    """Resolve and load the request's models, or raise the `gr.Error` that says why not."""
    model_id = (model_id or "").strip() or space.default.label
    revision = (revision or "").strip() or None
    served = space.access.resolve(model_id, revision)
    label = f"{served.label}@{revision}" if revision else served.label
    model = load(space.access, space.cache, served, revision)
    if not (compare_with_base and model.base_model):
        return Request(label, model, None, None, runs=((label, None, model),))
    base_served = space.access.resolve_base(model.base_model, served)
    untick = f"untick 'Compare with base model' to sample {label} alone."
    if base_served is None:
        raise gr.Error(
            f"The card of {label} names a base model that is neither a Hub repo id nor a model of this Space: {untick}"
        )
    try:
        base = load(space.access, space.cache, base_served)
    except gr.Error as error:
        raise gr.Error(f"{error.message} It is the base model named in the card of {label}: {untick}") from error
    if base.unet.config.sample_size != model.unet.config.sample_size:
        raise gr.Error(
            f"The base model named in the card of {label}, {base_served.label}, makes images of another size, "
            f"so they cannot be compared: {untick}"
        )
    runs = ((label, "fine-tuned", model), (base_served.label, "base", base))
    return Request(label, model, base_served.label, base, runs)


def check_request(
    scheduler: str, num_inference_steps: int | None, num_images: int | None, seed: int | None, eta: float | None
) -> None:
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
    if eta is None or not 0 <= eta <= 1:
        raise gr.Error(
            f"eta is DDIM's noise scale, between 0 (deterministic) and 1 (as much noise as DDPM); you asked for {eta}."
        )


def check_and_load(
    space: Space,
    model_id: str,
    scheduler: str,
    num_inference_steps: int,
    num_images: int,
    seed: int,
    revision: str = "",
    compare_with_base: bool = True,
    eta: float = 0.0,
) -> None:
    """The page's first step: a refused request raises here, with no outputs, so the results shown stay."""
    check_request(scheduler, num_inference_steps, num_images, seed, eta)
    prepare(space, model_id, revision, compare_with_base)


def save_jpeg(image: Image.Image, name: str, folder: str | Path) -> tuple[str, int]:
    """Encode `image` once and write the bytes to `folder`/<their digest>/`name`: (path, bytes). Gradio serves a
    file in its cache folder as it is, and the digest keeps different images of one name apart."""
    data = encode_jpeg(image)
    path = Path(folder) / hashlib.sha256(data).hexdigest() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path.resolve()), len(data)


def generate(
    space: Space,
    cache_dir: str | Path,
    model_id: str,
    scheduler: str,
    num_inference_steps: int,
    num_images: int,
    seed: int,
    revision: str = "",
    compare_with_base: bool = True,
    eta: float = 0.0,
    progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it by this default)
) -> Iterator[Update]:
    """Sample seeds seed, seed+1, ... and yield, after each image, every JPEG file so far (written to `cache_dir`)
    with its byte size. `eta` applies to DDIM only (the API's last parameter, so older calls keep working).

    Each seed's fine-tuned image and its base model's are sampled back to back, so a pair is shown as soon as
    it exists; the last value (what gradio_client's `predict` returns) holds them all.
    """
    check_request(scheduler, num_inference_steps, num_images, seed, eta)
    request = prepare(space, model_id, revision, compare_with_base)
    sampler = Sampler(scheduler, num_inference_steps, eta if scheduler == "DDIM" else None)
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
            image, seconds = space.cache.sampler.submit(
                timed, sample_image, pipeline, seed_value, num_inference_steps, eta=sampler.eta, autocast_dtype=dtype
            ).result()
            run_model.throughput.record(seconds, num_inference_steps)
            stem = f"{run_label.replace('/', '--').replace('@', '-')}-{scheduler}-seed{seed_value}.jpg"
            path, num_bytes = save_jpeg(image, stem, cache_dir)
            images[run_label].append(image)
            sizes[run_label].append(num_bytes)
            gallery_items.append((path, size_caption(role, seed_value, num_bytes, sampler)))
            rows.append([run_label, scheduler, seed_value, num_bytes])
            if run_label == request.runs[-1][0]:  # the seed's last image: its figures are complete
                summary = pairs_summary(request, sampler, images, sizes, compare_with_base)
            if left := total - len(gallery_items):
                seconds_left = left * num_inference_steps * request.model.throughput.seconds_per_forward
                yield gallery_items, rows, f"{summary} *Still sampling: about {duration_text(seconds_left)} to go.*"
            else:
                yield gallery_items, rows, summary


def gpu_seconds(
    space: Space,
    model_id: str,
    scheduler: str,
    num_inference_steps: int,
    num_images: int,
    seed: int,
    revision: str = "",
    compare_with_base: bool = True,
    eta: float = 0.0,
    progress: gr.Progress | None = None,
) -> int:
    """The ZeroGPU lease `generate` asks for: twice the estimate at the default model's speed, plus loading."""
    speed = space.default_model.throughput.seconds_per_forward
    forwards = num_inference_steps * num_images * (2 if compare_with_base else 1)
    return int(min(MAX_GPU_SECONDS, 30 + 2 * forwards * speed))


def estimate(
    space: Space, model_id: str, revision: str, num_inference_steps: float, num_images: float, compare: bool
) -> str:
    """The estimate line for the current settings, from the models already loaded (nothing is loaded here)."""
    model_id = (model_id or "").strip() or space.default.label
    source, hub = space.access.served(model_id)
    model = space.cache.peek(source, (revision or "").strip() or None, hub_only=hub)
    if not num_inference_steps or not num_images:
        return ""
    models = 2 if compare and model is not None and model.base_model else 1
    return estimate_text(model, int(num_inference_steps), int(num_images), models)


def size_caption(role: str | None, seed: int, num_bytes: int, sampler: Sampler) -> str:
    """`seed 3, base: 4.321 kB (DDIM, 20 steps, eta 1)`: the seed, the model, the exact size (bytes / 1000, the
    reward's unit) and the sampler, so that a screenshot says what it shows (`CSS` lets it wrap to two lines)."""
    return f"seed {seed}{f', {role}' if role else ''}: {num_bytes / 1000:.3f} kB ({sampler.text})"


def summarize(
    model_id: str,
    sampler: str,
    sizes: Sequence[int],
    base_model: str | None,
    base_sizes: Sequence[int],
    fidelity: dict[str, float] | None = None,
) -> str:
    """One line: the sampler, the mean JPEG size, how much smaller than the base model's from the same seeds, and
    at what cost."""
    line = f"**{model_id}** with {sampler}: mean JPEG size {mean(sizes):,.0f} bytes over {len(sizes)} image(s)"
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
    return f"{line}; {describe(fidelity)}."


def fidelity_figures(
    images: Sequence[Image.Image], base_images: Sequence[Image.Image], judge: SubjectJudge | None = None
) -> dict[str, float]:
    """The fidelity figures of `training.fidelity` for one request (diversity and KID need two images or more),
    with the subject figures where the base ships a `judge`."""
    if len(images) >= 2:
        return fidelity_to_base(images, base_images, judge)
    figures = {"ssim_to_base": ssim_to_base(images, base_images)}
    return figures | subject_figures(images, base_images, judge) if judge is not None else figures


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
    request: Request,
    sampler: Sampler,
    images: dict[str, list[Image.Image]],
    sizes: dict[str, list[int]],
    compare_with_base: bool,
) -> str:
    """The summary of the seeds sampled so far, every model's image of each (computed when a seed completes)."""
    base_images = images[request.base_label] if request.base else []
    summary = summarize(
        request.label,
        f"{sampler.text} (as trained)" if sampler == request.model.trained else sampler.text,
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
