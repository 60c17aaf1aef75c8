"""The Space's streaming handler called as a plain function: no server, no client, local model folders."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from diffusers import UNet2DModel
from huggingface_hub import ModelCard, ModelCardData

from ddpo_hub.space.access import Access
from ddpo_hub.space.serving import (
    ModelCache,
    Space,
    Throughput,
    fitted_defaults,
    generate,
    open_space,
    time_forwards,
)
from tests.helpers import TINY_UNET_CONFIG, make_tiny_pipeline


def save_model(folder: Path, weights_seed: int, base_model: str | None = None) -> str:
    """A tiny pipeline folder whose card names `base_model` (a local folder here)."""
    make_tiny_pipeline(weights_seed).save_pretrained(folder)
    card = ModelCard.from_template(ModelCardData(base_model=base_model), template_str="---\n{{ card_data }}\n---\n")
    card.save(folder / "README.md")
    return str(folder)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Space:
    """A Space whose default model is a local fine-tuned folder, its card naming a local base folder."""
    root = tmp_path_factory.mktemp("models")
    base = save_model(root / "base", 0)
    finetuned = save_model(root / "finetuned", 1, base_model=base)
    return open_space(Access.for_operator(finetuned), ModelCache(2, torch.device("cpu")))


def run(space: Space, cache_dir: Path, **request) -> list:
    """Every update the handler yields for `request` (the defaults of a DDIM 2-step request filled in), copied as
    it is yielded (the handler extends its lists, as Gradio sends each update before the next)."""
    settings = dict(model_id="", scheduler="DDIM", num_inference_steps=2, num_images=1, seed=0) | request
    return [(list(gallery), list(rows), summary) for gallery, rows, summary in generate(space, cache_dir, **settings)]


def test_byte_sizes_are_the_sizes_of_the_files_written(space, tmp_path):
    updates = run(space, tmp_path, num_images=2, seed=5, compare_with_base=False)
    assert [len(gallery) for gallery, _, _ in updates] == [1, 2]
    gallery, rows, summary = updates[-1]
    for (path, caption), (label, scheduler, seed, num_bytes) in zip(gallery, rows, strict=True):
        assert Path(path).parent.parent == tmp_path  # in the given cache folder, as Gradio serves it
        assert Path(path).stat().st_size == num_bytes
        assert caption == f"seed {seed}: {num_bytes / 1000:.3f} kB (DDIM, 2 steps, eta 0)"
        assert (label, scheduler) == ("finetuned", "DDIM")
    assert [row[2] for row in rows] == [5, 6]
    assert "over 2 image(s)" in summary and "Still sampling" not in summary


def test_compare_mode_gives_a_fine_tuned_and_base_pair_per_seed(space, tmp_path):
    updates = run(space, tmp_path, num_images=3, seed=10)
    gallery, rows, summary = updates[-1]
    seeds = (10, 11, 12)
    assert [(row[0], row[2]) for row in rows] == [(label, seed) for seed in seeds for label in ("finetuned", "base")]
    assert [caption.split(":")[0] for _, caption in gallery] == [
        f"seed {seed}, {role}" for seed in seeds for role in ("fine-tuned", "base")
    ]
    assert "than the base model **base**" in summary
    assert all("Still sampling" in update[2] for update in updates[:-1])


@pytest.mark.parametrize(
    ("model_id", "message"),
    [("../../etc", "server folders are not served"), ("/tmp/anything", "server folders are not served")],
)
def test_a_refused_model_id_raises_before_anything_is_written(space, tmp_path, model_id, message):
    with pytest.raises(gr.Error, match=message):
        run(space, tmp_path, model_id=model_id)
    assert list(tmp_path.iterdir()) == []


def test_an_allow_list_refuses_other_models(space, tmp_path):
    restricted = Space(
        Access.for_operator(space.default.source, ["user/allowed"]),
        space.cache,
        space.default,
        space.default_model,
        space.defaults,
    )
    with pytest.raises(gr.Error, match="This Space only serves these models: finetuned, user/allowed"):
        run(restricted, tmp_path, model_id="user/other")


@pytest.mark.parametrize(
    ("scheduler", "steps", "message"),
    [
        ("DDIM", 0, "DDIM takes between 1 and 250 inference steps here; you asked for 0."),
        ("DDIM", 251, "DDIM takes between 1 and 250 inference steps here; you asked for 251."),
        ("PNDM", 3, "PNDM takes between 4 and 250 inference steps here; you asked for 3."),
        ("DDPM", 1001, "DDPM takes between 1 and 1000 inference steps here; you asked for 1001."),
    ],
)
def test_steps_out_of_range_are_refused_not_clamped(space, tmp_path, scheduler, steps, message):
    with pytest.raises(gr.Error) as error:
        run(space, tmp_path, scheduler=scheduler, num_inference_steps=steps)
    assert error.value.message == message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("eta", [-0.5, 1.01])
def test_eta_outside_0_to_1_is_refused(space, tmp_path, eta):
    with pytest.raises(gr.Error, match=f"eta is DDIM's noise scale.*you asked for {eta}"):
        run(space, tmp_path, eta=eta)


def test_one_slow_timing_pass_does_not_change_the_fitted_defaults():
    """A pass slowed by a busy machine (the start-up timing once measured 0.524 s for a 0.016 s pass) is outvoted by
    the others, at start-up and while serving."""
    unet = UNet2DModel(**TINY_UNET_CONFIG).eval()
    steady = Throughput.of(time_forwards(unet, None))
    expected = fitted_defaults(steady.seconds_per_forward, models=2)
    passes = itertools.count()
    unet.register_forward_pre_hook(lambda *_: time.sleep(1.0) if next(passes) == 2 else None)  # the 2nd timed pass
    slowed = Throughput.of(time_forwards(unet, None))
    assert max(slowed.timings) >= 1.0
    assert fitted_defaults(max(slowed.timings), models=2) != expected  # what that pass alone would have proposed
    assert fitted_defaults(slowed.seconds_per_forward, models=2) == expected
    steady.record(seconds=20.0, forwards=20)  # one image sampled at 1 s per pass
    assert fitted_defaults(steady.seconds_per_forward, models=2) == expected
