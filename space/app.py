"""Gradio Space: sample a DDPO fine-tuned DDPM and its base model from the same seeds, and show JPEG sizes.

This file is the page: its layout and which handler each event runs. The request path (loading, timing,
sampling, the streaming handler) is `serving.py`; which models a visitor may load and what they may see of the
server is `access.py`.

Run `python space/app.py`; `MODEL_ID` (Hub id or local pipeline folder) picks the default model and
`ALLOWED_MODELS` (comma-separated Hub ids) optionally restricts what users may load. Visitors may name Hub
repo ids and the bundled models; a local folder is served only when the operator named it, under its folder's
name.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from functools import partial
from typing import Literal

import gradio as gr
import torch

from ddpo_hub.space.access import Access
from ddpo_hub.space.serving import (
    CACHE_SIZE,
    DEFAULT_SCHEDULER,
    MAX_IMAGES,
    MAX_SEED,
    STEP_RANGES,
    ModelCache,
    Space,
    check_and_load,
    estimate,
    examples_cache_folder,
    generate,
    gpu_seconds,
    open_space,
)
from ddpo_hub.training.jpeg import JPEG_QUALITY, JPEG_SUBSAMPLING
from ddpo_hub.training.pipelines import TINY_BASE_MODEL, bundled_models, read_data_notice

try:  # Present on Hugging Face Spaces: `spaces.GPU` lends a ZeroGPU device to the decorated function.
    import spaces
except ImportError:
    spaces = None

ExamplesCache = Literal["eager", "lazy", "off"]
CSS = "#gallery .fixed-height { min-height: 0; } #gallery .caption-label { white-space: normal; }"
"""Pass to `launch(css=CSS)`: the gallery is as tall as its rows (Gradio's default keeps 450 px for one row), and a
caption naming the sampler wraps under its thumbnail instead of being cut."""


def controls_for(space: Space, scheduler: str) -> tuple[gr.Number, gr.Number]:
    """The steps box for `scheduler` (its bounds: out-of-range values are refused, not clamped; its default at
    the speed measured now) and the eta box, shown for DDIM only."""
    steps = STEP_RANGES.get(scheduler, STEP_RANGES[DEFAULT_SCHEDULER])
    steps_box = gr.Number(
        minimum=steps.minimum,
        maximum=steps.maximum,
        value=space.refitted_defaults().steps.get(scheduler, steps.default),
        info=f"{scheduler}: {steps.minimum} to {steps.maximum}.",
    )
    return steps_box, gr.Number(visible=scheduler == "DDIM")


def images_for(space: Space) -> gr.Slider:
    """The image count a page opens on, at the speed measured now."""
    return gr.Slider(value=space.refitted_defaults().images)


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
    the seeded examples (the trained sampler, then one per scheduler) are sampled at launch ("eager"), at
    first use ("lazy") or not shown. `zero_gpu`: `generate` runs under `spaces.GPU` for a duration derived
    from the request.
    """
    access = Access.for_operator(model_id or TINY_BASE_MODEL.name, allowed_models)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    space = open_space(access, ModelCache(cache_size, device, measure=not zero_gpu))
    label, model, defaults = access.default_label, space.default_model, space.defaults
    trained = defaults.trained
    base_note = (
        f"Also samples its base model, {model.base_model}, from the same seeds."
        if model.base_model
        else "This model's card names no base model: only its own images are shown."
    )
    base_folder = bundled_models().get(model.base_model or "")
    notices = [notice for notice in (model.data_notice, read_data_notice(base_folder)) if notice]
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
                    choices=sorted(access.allowed or {label}),
                    value=label,
                    allow_custom_value=True,
                    label="Model",
                    info="A Hub repo id holding a diffusers DDPMPipeline.",
                )
                revision_box = gr.Textbox(value="", label="Revision", placeholder="main, or a tag such as epoch-10")
                scheduler_radio = gr.Radio(
                    list(STEP_RANGES),
                    value=defaults.scheduler,
                    label="Scheduler",
                    info=f"Opens as trained: {trained.text}." if trained else None,
                )
                # Number boxes, not sliders: a slider clamps what is typed into it and runs that silently.
                # No bounds here (the page sets the scheduler's at load): the API checks per scheduler.
                steps_box = gr.Number(
                    value=defaults.steps[defaults.scheduler],
                    precision=0,
                    step=1,
                    label="Inference steps",
                    elem_id="steps",
                )
                eta_box = gr.Number(
                    value=defaults.eta,
                    step=0.1,
                    label="eta",
                    info="DDIM's noise: 0 is deterministic, 1 as noisy as DDPM.",
                    visible=defaults.scheduler == "DDIM",
                    elem_id="eta",
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
                    show_label=False, elem_id="gallery", columns=4, height="auto", object_fit="contain"
                )
                summary_md = gr.Markdown(label="Summary", elem_id="summary")
                table = gr.Dataframe(
                    headers=["model", "scheduler", "seed", "bytes"],
                    datatype=["str", "str", "number", "number"],
                    interactive=False,
                    label="JPEG sizes",
                )
        # The JPEG files go to the gallery's cache folder, which Gradio serves from without copying them.
        handler = partial(generate, space, gallery.GRADIO_CACHE)
        if zero_gpu and spaces is not None:
            handler = spaces.GPU(duration=partial(gpu_seconds, space))(handler)
        inputs = [model_box, scheduler_radio, steps_box, images_slider, seed_box, revision_box, compare_box, eta_box]
        outputs = [gallery, table, summary_md]
        if examples_cache != "off":
            samplers = [(name, defaults.steps[name], 0.0) for name in STEP_RANGES]
            if trained:  # first: the sampler the model was trained with
                samplers.insert(0, (trained.scheduler, trained.num_inference_steps, trained.eta or 0.0))
            examples = [
                [label, name, steps, defaults.images, seed, "", True, eta]
                for seed, (name, steps, eta) in enumerate(samplers)
            ]
            key = json.dumps([space.default.source, model.fingerprint, examples, str(device)])
            with examples_cache_folder(key):
                gr.Examples(
                    examples,
                    inputs=inputs,
                    outputs=outputs,
                    fn=handler,
                    cache_examples=True,
                    cache_mode=examples_cache,
                    label="Examples: sampled once, shown at once",
                    elem_id="examples",
                    visible_columns=[1, 2, 3, 4, 7],  # scheduler, steps, images, seed, eta: the rest is the default's
                )
        private = dict(queue=False, api_visibility="private")
        estimate_inputs = [model_box, revision_box, steps_box, images_slider, compare_box]
        for control in estimate_inputs:
            control.change(partial(estimate, space), estimate_inputs, estimate_md, **private)
        scheduler_radio.change(partial(controls_for, space), scheduler_radio, [steps_box, eta_box], **private)
        demo.load(partial(controls_for, space), scheduler_radio, [steps_box, eta_box], **private)
        demo.load(partial(images_for, space), None, images_slider, **private)
        demo.load(partial(estimate, space), estimate_inputs, estimate_md, **private)
        button.click(partial(check_and_load, space), inputs, None, api_visibility="private").success(
            handler, inputs=inputs, outputs=outputs, api_name="generate"
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
