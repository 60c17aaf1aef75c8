"""Gradio Space: sample a DDPO fine-tuned DDPM and its base model from the same seeds, and show JPEG sizes.

Each byte count shown is the length of the file a user downloads: images are encoded once with
`training.jpeg.encode_jpeg` (the training reward's encoder) and handed to Gradio as files, which it serves
unchanged; PIL images or arrays would be re-encoded by the gallery (as WebP by default).

Run `python space/app.py`; `MODEL_ID` (Hub id or local pipeline folder) picks the default model and
`ALLOWED_MODELS` (comma-separated Hub ids) optionally restricts what users may load.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean

import gradio as gr
import torch
from diffusers import UNet2DModel
from gradio.processing_utils import save_bytes_to_cache
from PIL import Image

from ddpo_hub.training.fidelity import fidelity_to_base, ssim_to_base
from ddpo_hub.training.jpeg import encode_jpeg
from ddpo_hub.training.pipelines import (
    SCHEDULERS,
    TINY_BASE_MODEL,
    ModelLoadError,
    build_pipeline,
    hub_repo_id,
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


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample: its UNet on the serving device, scheduler config and card's base model."""

    unet: UNet2DModel
    scheduler_config: dict
    base_model: str | None


class ModelCache:
    """Loaded models keyed by (model id, revision); beyond `max_models` the least recently used is dropped.

    Loading holds the lock, so simultaneous first requests for a model download and load it once.
    """

    def __init__(self, max_models: int, device: torch.device):
        self.max_models = max_models
        self.device = device
        self._models: OrderedDict[tuple[str, str | None], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: str, revision: str | None = None) -> LoadedModel:
        key = (model_id, revision)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            unet, scheduler_config = load_unet_and_scheduler_config(model_id, revision=revision)
            loaded = LoadedModel(
                unet=unet.to(self.device).eval(),
                scheduler_config=scheduler_config,
                base_model=read_base_model(model_id, revision=revision),
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


def compare_with_base(images: Sequence[Image.Image], base_images: Sequence[Image.Image]) -> dict[str, float]:
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
    named in its card is always allowed with it.
    """
    default_model = model_id or TINY_BASE_MODEL.name
    allowed = {default_model, *allowed_models} if allowed_models else set()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = ModelCache(cache_size, device)

    def check_model(model: str, revision: str | None) -> None:
        """Refuse models the operator did not allow and folders on the server (bar the default model)."""
        if allowed and model not in allowed:
            raise gr.Error(f"This Space only serves these models: {', '.join(sorted(allowed))}.")
        if model != default_model and is_local_path(model):
            raise gr.Error("Enter a Hub model id such as 'user/model'; server folders are not served.")
        if revision and hub_repo_id(model) is None:
            raise gr.Error(f"{model} is a folder on the server: revisions only apply to Hub repos.")

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
        model_id = (model_id or "").strip() or default_model
        revision = (revision or "").strip() or None
        seeds = list(range(seed, seed + num_images))
        label = f"{model_id}@{revision}" if revision else model_id

        check_model(model_id, revision)
        progress(0, desc=f"Loading {label}")
        try:
            model = cache.get(model_id, revision)
        except ModelLoadError as error:
            raise gr.Error(str(error)) from error
        base = None
        if compare_with_base and model.base_model:
            progress(0, desc=f"Loading base model {model.base_model}")
            try:
                base = cache.get(model.base_model)
            except ModelLoadError as error:
                raise gr.Error(
                    f"{error} It is the base model named in the card of {label}: "
                    "untick 'Compare with base model' to sample that model alone."
                ) from error
        # (table label, caption role, model) per model sampled
        runs = [(label, "fine-tuned", model), (model.base_model, "base", base)] if base else [(label, None, model)]

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
        fidelity = compare_with_base(*sampled) if base else None
        summary = summarize(label, sizes, model.base_model, base_sizes, fidelity)
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
                    choices=sorted(allowed or {default_model}),
                    value=default_model,
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
