"""Gradio Space: sample a DDPO fine-tuned DDPM and its base model from the same seeds, and show JPEG sizes.

Each byte count shown is the length of the file a user downloads: images are encoded once with
`training.jpeg.encode_jpeg` (the training reward's encoder) and handed to Gradio as files, which it serves
unchanged; PIL images or arrays would be re-encoded by the gallery (as WebP by default).

Run `python space/app.py`; `MODEL_ID` (Hub id or local pipeline folder) picks the default model and
`ALLOWED_MODELS` (comma-separated Hub ids) optionally restricts what users may load. Visitors may name Hub
repo ids (checked before any lookup, and fetched from the Hub only) and the bundled models; a local folder
is served only when the operator named it, under its folder's name: no server path reaches a visitor.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import gradio as gr
import torch
from diffusers import UNet2DModel
from gradio.processing_utils import save_bytes_to_cache
from huggingface_hub import constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image

from ddpo_hub.training.fidelity import fidelity_to_base, ssim_to_base
from ddpo_hub.training.jpeg import encode_jpeg
from ddpo_hub.training.pipelines import (
    SCHEDULERS,
    TINY_BASE_MODEL,
    ModelLoadError,
    build_pipeline,
    bundled_models,
    is_local_path,
    load_unet_and_scheduler_config,
    read_base_model,
    sample_seeded,
)

try:  # Present on Hugging Face Spaces: `spaces.GPU` lends a ZeroGPU device to the decorated function.
    import spaces
except ImportError:
    spaces = None


@dataclass(frozen=True)
class StepRange:
    """The inference steps the Space accepts for one scheduler, and the number it proposes."""

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
MAX_REPO_PART_LENGTH = 96
"""The Hub's limit on a repo name (and here on its namespace too): longer ids are refused unread."""
MAX_REVISION_LENGTH = 200
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
"""Branches, tags (`epoch-10`), commit hashes and `refs/pr/N`: what git refs and the Hub allow, bar oddities."""
APP_ROOT = Path(__file__).resolve().parents[1]
"""The installed project (the checkout, or the Space's folder): never named to visitors."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: its UNet on the serving device, scheduler config and card's base model."""

    unet: UNet2DModel
    scheduler_config: dict
    base_model: str | None


@dataclass(frozen=True)
class ServedModel:
    """A model the Space agreed to serve: what visitors see, and what is loaded (never shown to them)."""

    label: str
    """The name in the dropdown, the table and messages: a Hub id, a bundled name or a local folder's name."""
    source: str
    """What is loaded: the Hub id, the bundled name or the server folder."""
    hub: bool
    """Loaded from the Hub only: `source` is never looked up on the file system."""


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


class ModelCache:
    """Loaded models keyed by (model id, revision); beyond `max_models` the least recently used is dropped.

    Loading holds the lock, so simultaneous first requests for a model download and load it once.
    """

    def __init__(self, max_models: int, device: torch.device):
        self.max_models = max_models
        self.device = device
        self._models: OrderedDict[tuple[str, str | None, bool], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def get(self, model_id: str, revision: str | None = None, *, hub_only: bool = False) -> LoadedModel:
        """`hub_only`: `model_id` is a Hub repo id, fetched from the Hub and never looked up on disk."""
        key = (model_id, revision, hub_only)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            unet, scheduler_config = load_unet_and_scheduler_config(model_id, revision=revision, hub_only=hub_only)
            loaded = LoadedModel(
                unet=unet.to(self.device).eval(),
                scheduler_config=scheduler_config,
                base_model=read_base_model(model_id, revision=revision, hub_only=hub_only),
            )
            self._models[key] = loaded
            if len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return loaded


def sample_images(
    model: LoadedModel, scheduler: str, num_inference_steps: int, seeds: Sequence[int]
) -> list[Image.Image]:
    """Sample one image per seed (the same pictures `ddpo-eval` draws for those seeds)."""
    return sample_seeded(build_pipeline(model.unet, model.scheduler_config, scheduler), seeds, num_inference_steps)


def save_jpegs(images: Sequence[Image.Image], seeds: Sequence[int], stem: str, folder: str) -> list[tuple[str, int]]:
    """Encode each image once and store the bytes where Gradio serves files from unchanged: (path, bytes)."""
    files = []
    for image, seed in zip(images, seeds, strict=True):
        data = encode_jpeg(image)
        files.append((save_bytes_to_cache(data, f"{stem}-seed{seed}.jpg", cache_dir=folder), len(data)))
    return files


def check_request(scheduler: str, num_inference_steps: int, num_images: int, seed: int | None) -> None:
    """Refuse settings the Space does not serve, with a sentence the user can act on."""
    if scheduler not in STEP_RANGES:
        raise gr.Error(f"Unknown scheduler {scheduler!r}: choose one of {', '.join(STEP_RANGES)}.")
    steps = STEP_RANGES[scheduler]
    if not steps.minimum <= num_inference_steps <= steps.maximum:
        raise gr.Error(
            f"{scheduler} takes between {steps.minimum} and {steps.maximum} inference steps here; "
            f"you asked for {num_inference_steps}."
        )
    if not 1 <= num_images <= MAX_IMAGES:
        raise gr.Error(f"Generate between 1 and {MAX_IMAGES} images at a time; you asked for {num_images}.")
    if seed is None or not 0 <= seed <= MAX_SEED:
        raise gr.Error(f"The seed must be a whole number between 0 and {MAX_SEED}.")


def size_caption(role: str | None, seed: int, num_bytes: int) -> str:
    """`base: 4,321 bytes (4.3 kB)` when two models are compared (the table has the seeds), else `seed 3: ...`.

    Short, because the gallery cuts captions at the width of a thumbnail.
    """
    return f"{role or f'seed {seed}'}: {num_bytes:,} bytes ({num_bytes / 1000:.1f} kB)"


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
    return f"{line}; {', '.join(costs)}."


def fidelity_figures(images: Sequence[Image.Image], base_images: Sequence[Image.Image]) -> dict[str, float]:
    """The fidelity figures of `training.fidelity` for one request (diversity needs two images or more)."""
    if len(images) >= 2:
        return fidelity_to_base(images, base_images)
    return {"ssim_to_base": ssim_to_base(images, base_images)}


def build_demo(
    model_id: str | None = None,
    *,
    allowed_models: Sequence[str] = (),
    cache_size: int = CACHE_SIZE,
    device: torch.device | None = None,
    concurrency_limit: int = 2,
    max_queue_size: int = 32,
) -> gr.Blocks:
    """The Space's UI and its `/generate` API.

    `model_id` is the default model (a Hub id or local folder; the bundled tiny model when None). When
    `allowed_models` is given, users may only pick those models (and the default); a model's base model
    named in its card is always allowed with it. Visitors may otherwise name Hub repo ids and the bundled
    models; server folders are served only when the operator named them here, and shown by their names.
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
    cache = ModelCache(cache_size, device)

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
        try:
            return cache.get(served.source, revision, hub_only=served.hub)
        except ModelLoadError as error:
            logger.warning("Could not load %s: %s", served.label, error)
            folders = shown_as if served.hub else {served.source: served.label, **shown_as}
            raise gr.Error(scrub_paths(str(error), folders)) from error

    def generate(
        model_id: str,
        scheduler: str,
        num_inference_steps: int,
        num_images: int,
        seed: int,
        revision: str = "",
        compare_with_base: bool = True,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio injects it by this default)
    ) -> tuple[list[tuple[str, str]], list[list], str]:
        """Sample `num_images` images from seeds seed, seed+1, ... and return their JPEG files and byte sizes."""
        check_request(scheduler, num_inference_steps, num_images, seed)
        model_id = (model_id or "").strip() or default_label
        revision = (revision or "").strip() or None
        seeds = list(range(seed, seed + num_images))

        served = resolve_model(model_id, revision)
        label = f"{served.label}@{revision}" if revision else served.label
        progress(0, desc=f"Loading {label}")
        model = load(served, revision)
        base = base_served = None
        if compare_with_base and model.base_model:
            base_served = resolve_base(model.base_model, served)
            untick = f"untick 'Compare with base model' to sample {label} alone."
            if base_served is None:
                raise gr.Error(
                    f"The card of {label} names a base model that is neither a Hub repo id nor a model of this "
                    f"Space: {untick}"
                )
            progress(0, desc=f"Loading base model {base_served.label}")
            try:
                base = load(base_served)
            except gr.Error as error:
                raise gr.Error(
                    f"{error.message} It is the base model named in the card of {label}: {untick}"
                ) from error
        # (table label, caption role, model) per model sampled
        runs = [(label, "fine-tuned", model), (base_served.label, "base", base)] if base else [(label, None, model)]

        results, sampled = [], []  # (table label, caption role, [(path, bytes) per seed]); the images per model
        for run_label, role, run_model in runs:
            images = sample_images(run_model, scheduler, num_inference_steps, seeds)
            sampled.append(images)
            stem = f"{run_label.replace('/', '--').replace('@', '-')}-{scheduler}"
            results.append((run_label, role, save_jpegs(images, seeds, stem, gallery.GRADIO_CACHE)))

        # Seed by seed: the model's image, then the base model's from the same seed.
        gallery_items, rows = [], []
        for index, seed_value in enumerate(seeds):
            for run_label, role, files in results:
                path, num_bytes = files[index]
                gallery_items.append((path, size_caption(role, seed_value, num_bytes)))
                rows.append([run_label, scheduler, seed_value, num_bytes])
        sizes = [num_bytes for _, num_bytes in results[0][2]]
        base_sizes = [num_bytes for _, num_bytes in results[1][2]] if base else []
        fidelity = fidelity_figures(*sampled) if base else None  # not `compare_with_base`: a parameter here
        summary = summarize(label, sizes, base_served.label if base else None, base_sizes, fidelity)
        if compare_with_base and not model.base_model:
            summary += " Its model card names no `base_model`, so there is nothing to compare with."
        return gallery_items, rows, summary

    if spaces is not None:
        generate = spaces.GPU(generate)

    def steps_for(scheduler: str) -> gr.Slider:
        steps = STEP_RANGES.get(scheduler, STEP_RANGES[DEFAULT_SCHEDULER])
        return gr.Slider(minimum=steps.minimum, maximum=steps.maximum, value=steps.default)

    default_steps = STEP_RANGES[DEFAULT_SCHEDULER]
    with gr.Blocks(title="DDPO JPEG compressibility", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DDPO: diffusion images that compress well\n"
            "A DDPM fine-tuned with reinforcement learning (DDPO) so its samples make smaller JPEG files, "
            "next to its base model from the same seeds. Sizes are the exact files you download "
            "(JPEG quality 95, 4:2:0), measured like the training reward."
        )
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Dropdown(
                    choices=sorted(allowed or {default_label}),
                    value=default_label,
                    allow_custom_value=True,
                    label="Model",
                    info="A Hub repo id holding a diffusers DDPMPipeline.",
                )
                revision_box = gr.Textbox(value="", label="Revision", placeholder="main, or a tag such as epoch-10")
                scheduler_radio = gr.Radio(list(STEP_RANGES), value=DEFAULT_SCHEDULER, label="Scheduler")
                steps_slider = gr.Slider(
                    minimum=1,
                    maximum=max(steps.maximum for steps in STEP_RANGES.values()),
                    value=default_steps.default,
                    step=1,
                    precision=0,
                    label="Inference steps",
                    elem_id="steps",
                )
                images_slider = gr.Slider(
                    minimum=1,
                    maximum=MAX_IMAGES,
                    value=DEFAULT_IMAGES,
                    step=1,
                    precision=0,
                    label="Images",
                    elem_id="num-images",
                )
                seed_box = gr.Number(value=0, minimum=0, maximum=MAX_SEED, precision=0, label="Seed")
                compare_box = gr.Checkbox(value=True, label="Compare with base model")
                button = gr.Button("Generate", variant="primary")
            with gr.Column(scale=3):
                gallery = gr.Gallery(
                    label="Samples (fine-tuned, then base, seed by seed)", elem_id="gallery", columns=4
                )
                summary_md = gr.Markdown(label="Summary", elem_id="summary")
                table = gr.Dataframe(
                    headers=["model", "scheduler", "seed", "bytes"],
                    datatype=["str", "str", "number", "number"],
                    interactive=False,
                    label="JPEG sizes",
                )
        scheduler_radio.change(steps_for, scheduler_radio, steps_slider, api_visibility="private")
        button.click(
            generate,
            inputs=[model_box, scheduler_radio, steps_slider, images_slider, seed_box, revision_box, compare_box],
            outputs=[gallery, table, summary_md],
            api_name="generate",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue_size)
    return demo


def allow_list(value: str) -> list[str]:
    """Parse `ALLOWED_MODELS`: comma- or whitespace-separated model ids."""
    return value.replace(",", " ").split()


if __name__ == "__main__":
    demo = build_demo(
        os.environ.get("MODEL_ID") or None,
        allowed_models=allow_list(os.environ.get("ALLOWED_MODELS", "")),
    )
    demo.launch()
