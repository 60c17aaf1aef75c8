"""The Space end to end: the app on 127.0.0.1, driven by gradio_client and by Chromium, models on the test Hub.

A tiny base model and a "fine-tuned" one (other random weights, its card naming the base) are published to
the loopback Hub. Results are checked against images regenerated here from the same seeds: the JPEG files
served must be exactly `encode_jpeg` of those images, and their sizes what the training reward measures.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel
from gradio_client import Client
from gradio_client.exceptions import AppError
from huggingface_hub import HfApi, ModelCard, ModelCardData, SpaceCard, constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from skimage.metrics import structural_similarity

from ddpo_hub.space import app, deploy, serving
from ddpo_hub.space.access import scrub_paths
from ddpo_hub.space.app import build_demo
from ddpo_hub.space.serving import STEP_RANGES, ModelCache, fitted_defaults
from ddpo_hub.training import pipelines
from ddpo_hub.training.jpeg import encode_jpeg, to_pil
from ddpo_hub.training.pipelines import (
    BUNDLED_BASE_MODEL_KEY,
    ROLLOUT_SAMPLER_KEY,
    Sampler,
    build_pipeline,
    load_unet_and_scheduler_config,
)
from ddpo_hub.training.rewards import jpeg_compressibility
from tests.helpers import TINY_UNET_CONFIG, free_port, make_tiny_pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the app and the reference sampling run: the same device, so their images are identical."""
FEW_STEPS = {"DDPM": 3, "DDIM": 3, "PNDM": 4}
"""Enough to exercise each scheduler; PNDM needs 4."""


@dataclass(frozen=True)
class Models:
    base: str
    finetuned: str
    not_a_pipeline: str
    orphan: str
    """A pipeline whose card names a base model that does not exist."""


@pytest.fixture(scope="module")
def models(hub_server, tmp_path_factory) -> Models:
    """Tiny pipelines on the test Hub: a base, a fine-tuned one naming it (tagged `epoch-1`), an orphan; a card."""
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    names = Models(
        *(hub_server.unique_repo_id(name) for name in ("tiny-base", "tiny-ddpo", "not-a-pipeline", "orphan"))
    )
    bases = {names.base: None, names.finetuned: names.base, names.orphan: f"{names.base}-deleted"}
    for weights_seed, (repo_id, base_model) in enumerate(bases.items()):
        folder = tmp_path_factory.mktemp("pipeline")
        make_tiny_pipeline(weights_seed).save_pretrained(folder)
        card_data = ModelCardData(base_model=base_model)
        ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n# Tiny test model\n").save(
            folder / "README.md"
        )
        api.create_repo(repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=folder)
    api.create_tag(names.finetuned, tag="epoch-1")
    # main moves on after the tag, so serving the tag must give other images than serving main.
    folder = tmp_path_factory.mktemp("pipeline")
    make_tiny_pipeline(len(bases)).save_pretrained(folder)
    api.upload_folder(repo_id=names.finetuned, folder_path=folder, allow_patterns=["unet/*"])
    api.create_repo(names.not_a_pipeline)
    api.upload_file(repo_id=names.not_a_pipeline, path_in_repo="README.md", path_or_fileobj=b"# Just a card\n")
    return names


@pytest.fixture(scope="module")
def space_url(models, tmp_path_factory):
    """The demo serving the fine-tuned model, launched in this process so images can be regenerated identically.

    Its examples are sampled as it launches, into a cache folder of its own."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
        demo = build_demo(models.finetuned, device=DEVICE)
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, css=app.CSS)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture
def client(space_url, tmp_path) -> Client:
    return Client(space_url, download_files=str(tmp_path), verbose=False)


def expected_images(model_id: str, scheduler: str, steps: int, seeds: list[int], revision=None) -> list[Image.Image]:
    """The images the Space should serve, from the bare diffusers pipeline: image i alone, from seed i."""
    unet, scheduler_config = load_unet_and_scheduler_config(model_id, revision=revision)
    pipeline = build_pipeline(unet.to(DEVICE), scheduler_config, scheduler)
    return [
        pipeline(batch_size=1, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).images[0]
        for seed in seeds
    ]


def training_rewards(images: list[Image.Image]) -> np.ndarray:
    """The training reward of PIL images, given to it in model space as the trainer does."""
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2)
    model_space = pixels.float() / 127.5 - 1
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(to_pil(model_space), images, strict=True))
    rewards, _ = jpeg_compressibility()(model_space)
    return rewards


def caption_bytes(caption: str) -> int:
    """The size a caption states, in bytes (captions give kB = bytes / 1000 to three decimals: exact)."""
    return round(1000 * float(re.fullmatch(r"seed \d+(?:, [a-z-]+)?: (\d+\.\d{3}) kB \(.+\)", caption).group(1)))


def check_served_jpegs(
    result, expected: dict[str, list[Image.Image]], scheduler: str, seeds: list[int], sampler: str | None = None
) -> None:
    """Gallery, table and images agree: per seed one image per model, the bytes measured are the bytes served;
    captions name the sampler (`sampler`, e.g. `DDIM, 3 steps, eta 0`; by default only its scheduler is checked)."""
    gallery, table, _ = result
    assert table["headers"] == ["model", "scheduler", "seed", "bytes"]
    assert len(gallery) == len(table["data"]) == len(seeds) * len(expected)
    rewards = {label: training_rewards(images) for label, images in expected.items()}
    rows = iter(zip(gallery, table["data"], strict=True))
    for index, seed in enumerate(seeds):
        for position, (label, images) in enumerate(expected.items()):
            item, (model, row_scheduler, row_seed, num_bytes) = next(rows)
            data = Path(item["image"]).read_bytes()
            assert (model, row_scheduler, row_seed) == (label, scheduler, seed)
            assert data == encode_jpeg(images[index])
            assert len(data) == num_bytes == caption_bytes(item["caption"])
            assert rewards[label][index] == -num_bytes / 1000
            role = f", {('fine-tuned', 'base')[position]}" if len(expected) > 1 else ""
            assert item["caption"].startswith(f"seed {seed}{role}: {num_bytes / 1000:.3f} kB ({sampler or scheduler}")
            assert item["caption"].endswith(f"({sampler})" if sampler else ")")


@pytest.mark.parametrize("scheduler", ["DDPM", "DDIM", "PNDM"])
def test_each_scheduler_serves_the_measured_jpegs(client, models, scheduler):
    steps, seeds = FEW_STEPS[scheduler], [7, 8]
    result = client.predict(
        model_id=models.finetuned,
        scheduler=scheduler,
        num_inference_steps=steps,
        num_images=len(seeds),
        seed=seeds[0],
        api_name="/generate",
    )
    expected = {
        models.finetuned: expected_images(models.finetuned, scheduler, steps, seeds),
        models.base: expected_images(models.base, scheduler, steps, seeds),
    }
    check_served_jpegs(result, expected, scheduler, seeds)
    sizes = {label: [row[3] for row in result[1]["data"] if row[0] == label] for label in expected}
    change = 100 * (1 - np.mean(sizes[models.finetuned]) / np.mean(sizes[models.base]))
    direction = "smaller" if change >= 0 else "larger"
    assert f"{abs(change):.1f}% {direction} than the base model **{models.base}**" in result[2]
    # What the cut costs, from the same seeds: scikit-image's SSIM of the pictures the pipelines return.
    pairs = zip(expected[models.finetuned], expected[models.base], strict=True)
    ssim = np.mean(
        [
            structural_similarity(np.asarray(a) / 255, np.asarray(b) / 255, channel_axis=2, data_range=1.0)
            for a, b in pairs
        ]
    )
    assert f"same-seed SSIM to base {ssim:.2f}" in result[2]


class SamplingGate:
    """Holds the Space's `hold_at`-th image (counting from 1) until `release()`: what was streamed before it can be
    looked at while the request is certainly still running."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_at: int):
        self.calls = 0
        self.reached = threading.Event()
        self._released = threading.Event()
        original = serving.sample_image

        def gated(*args, **kwargs):
            self.calls += 1
            if self.calls == hold_at:
                self.reached.set()
                self._released.wait(120)
            return original(*args, **kwargs)

        monkeypatch.setattr(serving, "sample_image", gated)

    def release(self) -> None:
        self._released.set()


def wait_until(condition, timeout: float = 60) -> None:
    """Poll `condition` (a wait for an event that must come, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_images_stream_to_gradio_client_as_they_are_sampled(client, models, monkeypatch):
    """Each image reaches the client when it is sampled; the last update is the result, as predict returns it."""
    seeds = [4, 5]
    gate = SamplingGate(monkeypatch, hold_at=3)  # the second seed's fine-tuned image
    job = client.submit(
        model_id=models.finetuned,
        scheduler="DDIM",
        num_inference_steps=3,
        num_images=len(seeds),
        seed=seeds[0],
        api_name="/generate",
    )
    try:
        assert gate.reached.wait(60)
        wait_until(lambda: len(job.outputs()) >= 2)
        while_held = [list(output) for output in job.outputs()]
        assert not job.done()
    finally:
        gate.release()
    final = job.result(timeout=60)
    updates = job.outputs()
    assert [len(gallery) for gallery, _, _ in while_held] == [1, 2]  # two updates before the request could finish
    assert [len(gallery) for gallery, _, _ in updates] == [1, 2, 3, 4]
    assert tuple(updates[-1]) == tuple(final)
    final_captions = [item["caption"] for item in final[0]]
    for gallery, table, summary in updates[:-1]:
        assert [item["caption"] for item in gallery] == final_captions[: len(gallery)]
        assert table["data"] == final[1]["data"][: len(gallery)]
        assert "Still sampling: about" in summary
    assert "Still sampling" not in final[2]
    assert "over 1 image(s), " in while_held[1][2] and "over 2 image(s), " in final[2]
    expected = {
        models.finetuned: expected_images(models.finetuned, "DDIM", 3, seeds),
        models.base: expected_images(models.base, "DDIM", 3, seeds),
    }
    check_served_jpegs(final, expected, "DDIM", seeds)


def test_defaults_fit_the_celebahq_architecture_on_a_cpu():
    """At the per-pass time measured for google/ddpm-celebahq-256 on 2 CPU cores (1.7 s, bf16), the defaults show
    the first pair within 45 s and finish within 120 s; a fast model keeps the usual defaults."""
    slow = fitted_defaults(1.7, models=2)
    for name, steps in slow.steps.items():
        assert STEP_RANGES[name].minimum <= steps and 2 * steps * 1.7 <= 45
    assert slow.images >= 1 and 2 * slow.images * slow.steps["DDIM"] * 1.7 <= 120
    fast = fitted_defaults(0.002, models=2)
    assert fast.steps == {name: limits.default for name, limits in STEP_RANGES.items()} and fast.images == 4


def test_a_model_fine_tuned_from_a_bundled_base_is_compared_with_it(tmp_path):
    """A card naming its base by bundled name (as `make demo`'s does) gets the comparison out of the box."""
    folder = tmp_path / "from-bundled"
    torch.manual_seed(5)
    unet = UNet2DModel(**{**TINY_UNET_CONFIG, "sample_size": 32})  # the bundled base's size
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    card_data = ModelCardData(**{BUNDLED_BASE_MODEL_KEY: "tiny-textures-32"})
    ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n# Tiny\n").save(folder / "README.md")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(str(folder), device=DEVICE, examples_cache="off")
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, download_files=str(tmp_path / "downloads"), verbose=False)
        result = client.predict(scheduler="DDIM", num_inference_steps=2, num_images=1, seed=2, api_name="/generate")
    finally:
        demo.close()
    expected = {
        "from-bundled": expected_images(str(folder), "DDIM", 2, [2]),
        "tiny-textures-32": expected_images("tiny-textures-32", "DDIM", 2, [2]),
    }
    check_served_jpegs(result, expected, "DDIM", [2])
    assert "than the base model **tiny-textures-32**" in result[2]


def test_revision_and_default_model(client, models):
    """A tag is served as that revision; the model defaults to the one the Space was started with."""
    tagged = client.predict(
        scheduler="DDIM",
        num_inference_steps=2,
        num_images=1,
        seed=3,
        revision="epoch-1",
        compare_with_base=False,
        api_name="/generate",
    )
    label = f"{models.finetuned}@epoch-1"
    check_served_jpegs(tagged, {label: expected_images(models.finetuned, "DDIM", 2, [3], "epoch-1")}, "DDIM", [3])
    assert "nothing to compare" not in tagged[2] and "than the base model" not in tagged[2]
    main = client.predict(
        scheduler="DDIM", num_inference_steps=2, num_images=1, seed=3, compare_with_base=False, api_name="/generate"
    )
    assert Path(main[0][0]["image"]).read_bytes() != Path(tagged[0][0]["image"]).read_bytes()


def test_bad_inputs_are_refused_and_the_app_keeps_serving(client, models):
    valid = dict(model_id=models.finetuned, scheduler="DDIM", num_inference_steps=2, num_images=1, seed=0)
    bad_requests = [
        (dict(num_inference_steps=500), "DDIM takes between 1 and 250 inference steps"),
        (dict(num_inference_steps=5000), "DDIM takes between 1 and 250 inference steps here; you asked for 5000"),
        (dict(scheduler="PNDM", num_inference_steps=2), "PNDM takes between 4 and 250"),
        (dict(scheduler="PNDM", num_inference_steps=5000), "PNDM takes between 4 and 250"),
        (dict(scheduler="PNDM", num_inference_steps=0), "PNDM takes between 4 and 250"),
        (dict(num_images=9), "greater than maximum value 8"),
        (dict(num_images=0), "less than minimum value 1"),
        (dict(scheduler="Euler"), "not in the list of choices"),
        (dict(model_id=f"{models.finetuned}-missing"), "was not found on the Hub"),
        (dict(model_id=models.not_a_pipeline), "is not a diffusers pipeline"),
        (dict(revision="epoch-99"), "has no revision 'epoch-99'"),
        (dict(model_id=str(REPO_ROOT)), "server folders are not served"),
        (dict(model_id=models.orphan), "untick 'Compare with base model'"),
    ]
    for change, message in bad_requests:
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(**{**valid, **change}, api_name="/generate")
    gallery, table, _ = client.predict(**valid, api_name="/generate")
    assert len(gallery) == len(table["data"]) == 2


def test_simultaneous_requests_all_complete(client, models):
    seeds = list(range(20, 28))
    with ThreadPoolExecutor(len(seeds)) as pool:
        jobs = [
            pool.submit(
                client.predict,
                model_id=models.base,
                scheduler="DDIM",
                num_inference_steps=2,
                num_images=1,
                seed=seed,
                compare_with_base=False,
                api_name="/generate",
            )
            for seed in seeds
        ]
        results = [job.result(timeout=120) for job in jobs]
    for seed, result in zip(seeds, results, strict=True):
        check_served_jpegs(result, {models.base: expected_images(models.base, "DDIM", 2, [seed])}, "DDIM", [seed])


def test_allow_list_and_a_local_default_model(models, tiny_pipeline_dir, tmp_path):
    """A local default model is served under its folder's name: its path never reaches a visitor."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(tiny_pipeline_dir, allowed_models=[models.finetuned], device=DEVICE, examples_cache="off")
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    label = Path(tiny_pipeline_dir).name
    try:
        config = urlopen(f"{demo.local_url}config", timeout=30).read().decode()
        assert tiny_pipeline_dir not in config and str(REPO_ROOT) not in config
        dropdown = next(c["props"] for c in json.loads(config)["components"] if c["props"].get("label") == "Model")
        assert dropdown["value"] == label and sorted(choice[0] for choice in dropdown["choices"]) == sorted(
            [label, models.finetuned]
        )
        client = Client(demo.local_url, download_files=str(tmp_path), verbose=False)
        for refused in (models.base, tiny_pipeline_dir):  # not allowed; the folder only by its name
            with pytest.raises(AppError, match="This Space only serves these models") as error:
                client.predict(model_id=refused, api_name="/generate")
            assert tiny_pipeline_dir not in str(error.value) and label in str(error.value)
        with pytest.raises(AppError, match="revisions only apply to Hub repos") as error:
            client.predict(revision="main", api_name="/generate")
        assert tiny_pipeline_dir not in str(error.value)
        allowed = dict(model_id=models.finetuned, scheduler="DDIM", num_inference_steps=2, num_images=1, seed=1)
        _, table, _ = client.predict(**allowed, api_name="/generate")
        assert [row[0] for row in table["data"]] == [models.finetuned, models.base]  # the base comes with it
        result = client.predict(scheduler="DDIM", num_inference_steps=2, num_images=1, seed=1, api_name="/generate")
        expected = {label: expected_images(tiny_pipeline_dir, "DDIM", 2, [1])}
        check_served_jpegs(result, expected, "DDIM", [1])
        assert "names no `base_model`" in result[2] and tiny_pipeline_dir not in result[2]
        assert all(tiny_pipeline_dir not in item["caption"] for item in result[0])
    finally:
        demo.close()


PROBE = "ddpo-probe"
"""In every hostile id below, so that any file-system call made for one of them can be spotted."""


def test_traversal_and_oversized_ids_are_refused_without_touching_the_file_system(
    client, space_url, models, tmp_path, monkeypatch
):
    touched: list[str] = []
    for name in ("stat", "lstat", "listdir", "scandir"):
        original = getattr(os, name)

        def recording(path=".", *args, _original=original, **kwargs):
            if isinstance(path, (str, bytes, os.PathLike)):
                touched.append(os.fsdecode(path))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(os, name, recording)
    loads: list[tuple] = []
    original_get = ModelCache.get
    monkeypatch.setattr(
        ModelCache,
        "get",
        lambda self, *args, **kwargs: loads.append((args, kwargs)) or original_get(self, *args, **kwargs),
    )

    bundled = REPO_ROOT / "training" / "base_models" / "tiny-textures-32"
    not_an_id = "server folders are not served"
    hostile = [
        (f"../../../../{PROBE}/folder", not_an_id),
        (f"/{PROBE}", not_an_id),
        (f"~/{PROBE}", not_an_id),
        (f"tiny-textures-32/../../{PROBE}", not_an_id),
        (f"../base_models/{PROBE}", not_an_id),
        (f"{PROBE}/a/b", not_an_id),
        (f"{PROBE}\\..\\x", not_an_id),
        (str(bundled), not_an_id),  # a real pipeline folder on this server, named by its path
        ("/etc", not_an_id),
        (PROBE * 1000, "at most 96 characters in each part; the one entered has 10,000 characters"),
        (f"{PROBE}/{'x' * 97}", "at most 96 characters in each part"),
    ]
    valid = dict(scheduler="DDIM", num_inference_steps=2, num_images=1, seed=0, compare_with_base=False)
    for model_id, message in hostile:
        with pytest.raises(AppError, match=re.escape(message)) as error:
            client.predict(model_id=model_id, **valid, api_name="/generate")
        assert str(REPO_ROOT) not in str(error.value) and PROBE not in str(error.value)
    assert loads == [], "nothing was loaded"
    assert [path for path in touched if PROBE in path or "base_models" in path] == []

    # A valid Hub id is fetched from the Hub only, even when a folder of that name is in the working directory.
    make_tiny_pipeline().save_pretrained(tmp_path / PROBE)
    monkeypatch.chdir(tmp_path)
    touched.clear()
    with pytest.raises(AppError, match=f"Model '{PROBE}' was not found on the Hub|{PROBE} cannot be fetched right now"):
        client.predict(model_id=PROBE, **valid, api_name="/generate")
    assert loads == [((PROBE, None), {"hub_only": True})]
    assert [path for path in touched if PROBE in path and not path.startswith(constants.HF_HUB_CACHE)] == []
    with pytest.raises(AppError, match="Enter a revision as a branch"):
        client.predict(model_id=models.finetuned, revision="../../x", **valid, api_name="/generate")

    config = urlopen(f"{space_url}config", timeout=30).read().decode()
    assert str(REPO_ROOT) not in config


def test_load_errors_shown_to_visitors_name_no_server_path():
    cache_path = f"{constants.HF_HUB_CACHE}/models--user--model/snapshots/0123/unet"
    message = scrub_paths(
        f"Could not load a diffusers UNet2DModel pipeline from 'run': no file named x in directory {cache_path}. "
        f"See {REPO_ROOT}/training and /srv/models/run, or '/etc/passwd'; the Hub is http://127.0.0.1:9/api.",
        {"/srv/models/run": "run"},
    )
    assert str(REPO_ROOT) not in message and constants.HF_HUB_CACHE not in message and "/etc" not in message
    assert "/srv" not in message and "from 'run'" in message and "http://127.0.0.1:9/api" in message


def test_model_cache_is_bounded_and_keyed_by_revision(tiny_pipeline_dir, models):
    cache = ModelCache(max_models=2, device=torch.device("cpu"))
    first = cache.get(tiny_pipeline_dir)
    assert cache.get(tiny_pipeline_dir) is first
    tagged = cache.get(models.finetuned, "epoch-1")
    assert tagged.base_model == models.base and cache.get(models.finetuned, "epoch-1") is tagged
    cache.get(models.finetuned)  # a third model: the least recently used (the folder) is dropped
    assert cache.get(models.finetuned, "epoch-1") is tagged
    assert cache.get(tiny_pipeline_dir) is not first


@pytest.fixture(scope="module")
def trained_space(models, hub_server, tmp_path_factory):
    """The demo serving a model whose card records its rollouts' sampler, DDIM 3 steps at eta 1: (id, url)."""
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    repo_id = hub_server.unique_repo_id("tiny-ddpo-eta1")
    folder = tmp_path_factory.mktemp("pipeline")
    make_tiny_pipeline(7).save_pretrained(folder)
    card_data = ModelCardData(base_model=models.base, **{ROLLOUT_SAMPLER_KEY: Sampler("DDIM", 3, 1.0).card_value()})
    ModelCard.from_template(card_data, template_str="---\n{{ card_data }}\n---\n# Tiny\n").save(folder / "README.md")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        env.setenv("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
        demo = build_demo(repo_id, device=DEVICE, examples_cache="lazy")
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield repo_id, demo.local_url
    finally:
        demo.close()


def stock_ddim_images(model_id: str, steps: int, seeds: list[int], eta: float) -> list[Image.Image]:
    """What diffusers' own DDIMPipeline makes of the model's folder, image i alone from seed i."""
    pipeline = DDIMPipeline.from_pretrained(snapshot_download(model_id)).to(DEVICE)
    return [
        pipeline(
            batch_size=1, num_inference_steps=steps, eta=eta, generator=torch.Generator().manual_seed(seed)
        ).images[0]
        for seed in seeds
    ]


def generate_parameters(client: Client) -> dict[str, object]:
    """The `/generate` API's parameters, in order, with the defaults a call that leaves them out gets."""
    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    return {parameter["parameter_name"]: parameter["parameter_default"] for parameter in parameters}


def test_a_model_trained_with_ddim_eta_1_is_served_as_trained_by_default(trained_space, models, tmp_path):
    repo_id, url = trained_space
    client = Client(url, download_files=str(tmp_path), verbose=False)
    defaults = generate_parameters(client)
    assert list(defaults) == [
        "model_id", "scheduler", "num_inference_steps", "num_images", "seed", "revision", "compare_with_base", "eta"
    ]  # fmt: skip
    assert (defaults["scheduler"], defaults["num_inference_steps"], defaults["eta"]) == ("DDIM", 3, 1.0)
    result = client.predict(api_name="/generate")  # every setting the default
    seeds = list(range(defaults["num_images"]))
    expected = {label: stock_ddim_images(label, 3, seeds, eta=1.0) for label in (repo_id, models.base)}
    check_served_jpegs(result, expected, "DDIM", seeds, "DDIM, 3 steps, eta 1")
    assert f"**{repo_id}** with DDIM, 3 steps, eta 1 (as trained): mean JPEG size" in result[2]

    deterministic = client.predict(num_images=1, eta=0, api_name="/generate")
    expected = {label: stock_ddim_images(label, 3, [0], eta=0.0) for label in (repo_id, models.base)}
    check_served_jpegs(deterministic, expected, "DDIM", [0], "DDIM, 3 steps, eta 0")
    assert "with DDIM, 3 steps, eta 0: mean" in deterministic[2]  # not the trained sampler
    assert Path(deterministic[0][0]["image"]).read_bytes() != Path(result[0][0]["image"]).read_bytes()

    for eta in (1.5, -0.1):
        message = (
            f"eta is DDIM's noise scale, between 0 (deterministic) and 1 (as much noise as DDPM); you asked for {eta}."
        )
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(num_images=1, eta=eta, api_name="/generate")

    # The page opens on it, says so, and its first example is it.
    config = json.loads(urlopen(f"{url}config", timeout=30).read())
    radio = next(c["props"] for c in config["components"] if c["props"].get("label") == "Scheduler")
    assert radio["info"] == "Opens as trained: DDIM, 3 steps, eta 1."
    examples = next(c["props"] for c in config["components"] if c["props"].get("elem_id") == "examples")
    assert examples["headers"] == ["Scheduler", "Inference steps", "Images", "Seed", "eta"]
    assert examples["samples"][0] == ["DDIM", 3, defaults["num_images"], 0, 1.0]


def test_a_model_without_a_recorded_sampler_keeps_todays_defaults(client, space_url):
    defaults = generate_parameters(client)
    assert (defaults["scheduler"], defaults["num_inference_steps"], defaults["eta"]) == ("DDIM", 50, 0.0)
    assert defaults["num_images"] == 4
    config = json.loads(urlopen(f"{space_url}config", timeout=30).read())
    radio = next(c["props"] for c in config["components"] if c["props"].get("label") == "Scheduler")
    assert not radio.get("info")


@pytest.mark.slow
def test_deployed_space_runs_on_its_own(models, hub_server, hub_token, tmp_path, capsys):
    """`python -m ddpo_hub.space.deploy` makes a self-contained Space repo; `python app.py` in a copy of it serves."""
    space_id = hub_server.unique_repo_id("ddpo-demo")
    deploy.main(["--space-id", space_id, "--model-id", models.finetuned])
    assert space_id in capsys.readouterr().out
    api = HfApi(endpoint=hub_server.endpoint, token=hub_token)
    info = api.space_info(space_id)
    assert info.sdk == "gradio"
    assert {
        "app.py",
        "requirements.txt",
        "README.md",
        "ddpo_hub/training/jpeg.py",
        "ddpo_hub/training/pipelines.py",
    } <= set(api.list_repo_files(space_id, repo_type="space"))
    variables = api.get_space_variables(space_id)
    assert variables["MODEL_ID"].value == models.finetuned
    space_dir = Path(snapshot_download(space_id, repo_type="space", local_dir=tmp_path / "space"))
    card = ModelCard.load(space_dir / "README.md")
    assert card.data.models == [models.finetuned, models.base]
    tiny = UNet2DModel(**TINY_UNET_CONFIG)
    assert card.data.suggested_hardware == "cpu-basic"  # 16x16, far below the size that asks for a GPU
    assert card.data.short_description == "A 16px DDPM tuned by DDPO for smaller JPEGs, vs its base"
    assert f"`{models.finetuned}` ({tiny.num_parameters() / 1e6:.2f} M UNet parameters, 16x16 images)" in card.text
    assert f"compares it with `{models.base}`" in card.text and "quality 95 with 4:2:0" in card.text

    port = free_port()
    environment = {
        **os.environ,
        "MODEL_ID": variables["MODEL_ID"].value,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONPATH": "",
    }
    environment.pop("HF_TOKEN")
    server = subprocess.Popen(
        [sys.executable, "app.py"], cwd=space_dir, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = wait_for_app(f"http://127.0.0.1:{port}/", server, tmp_path)
        gallery, table, summary = client.predict(
            scheduler="DDIM", num_inference_steps=2, num_images=1, seed=5, api_name="/generate"
        )
        assert [row[0] for row in table["data"]] == [models.finetuned, models.base]
        assert [len(Path(item["image"]).read_bytes()) for item in gallery] == [row[3] for row in table["data"]]
        assert f"than the base model **{models.base}**" in summary
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output


def test_the_space_card_of_the_celebahq_architecture_suggests_a_gpu():
    """google/ddpm-celebahq-256's config (no weights): 113.67 M parameters, 256 px, a GPU suggested."""
    facts = deploy.model_facts(str(REPO_ROOT / "tests" / "data" / "ddpm-celebahq-256-config"))
    assert (facts.parameters, facts.image_size) == (113_673_219, 256)
    card = SpaceCard(deploy.space_card("google/ddpm-celebahq-256", None, facts))
    assert card.data.suggested_hardware == "t4-small" and card.data.models == ["google/ddpm-celebahq-256"]
    assert len(card.data.short_description) <= 60 and "256px" in card.data.short_description
    assert "no base model (its card names none)" in card.text


def wait_for_app(url: str, server: subprocess.Popen, download_dir: Path, timeout: float = 120) -> Client:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, download_files=str(download_dir), verbose=False)
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise AssertionError(server.communicate()[0].decode(errors="replace")) from None
            time.sleep(1)


def test_an_unreachable_hub_gives_visitors_a_sentence_and_the_log_the_rest(client, monkeypatch, caplog):
    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("Connection refused while fetching the snapshot")

    monkeypatch.setattr(pipelines, "snapshot_download", unreachable)
    with pytest.raises(AppError) as error, caplog.at_level("WARNING", logger=serving.__name__):
        client.predict(model_id="someone/uncached-model", api_name="/generate")
    assert str(error.value) == (
        "someone/uncached-model cannot be fetched right now: the Hub does not answer this Space. Try again in a while."
    )
    assert "set HF_ENDPOINT" in caplog.text and "someone/uncached-model" in caplog.text


@pytest.mark.slow
def test_browser_streams_shows_examples_at_once_and_keeps_results_on_error(space_url, models, monkeypatch):
    """Chromium: the steps box has DDIM's bounds at load; an example shows its cached images with no sampling;
    a PNDM request shows its first pair while the rest is still sampling; captions fit at 1400 px; a refused
    request leaves the images shown, and the next valid one runs."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH); CI installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    gate = SamplingGate(monkeypatch, hold_at=1)  # nothing may be sampled while the example is shown
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(space_url)
            steps = page.locator("#steps input[type=number]")
            expect(steps).to_have_attribute("max", "250")  # DDIM's bounds, set at load
            captions = page.locator("#gallery .caption-label")
            page.locator("#examples tbody tr").first.click()
            expect(captions).to_have_count(8, timeout=30_000)  # DDPM example: 4 seeds, fine-tuned and base
            assert gate.calls == 0 and not gate.reached.is_set()
            gate.release()

            gate = SamplingGate(monkeypatch, hold_at=3)
            page.get_by_role("radio", name="PNDM").check()
            expect(steps).to_have_value("50")  # the scheduler's default arrived
            steps.fill("4")
            images = page.locator("#num-images input[type=number]")
            images.fill("2")
            images.press("Enter")
            page.get_by_role("button", name="Generate").click()
            assert gate.reached.wait(60)
            expect(captions).to_have_count(2)  # the first pair, while the second is held
            assert gate.calls == 3
            gate.release()
            expect(captions).to_have_count(4, timeout=60_000)
            expect(page.locator("#summary")).not_to_contain_text("Still sampling", timeout=30_000)
            texts = captions.all_inner_texts()
            truncated = captions.evaluate_all("labels => labels.map(label => label.scrollWidth > label.clientWidth)")
            # One row of thumbnails: the gallery is as tall as the row, not a half-empty fixed box.
            gallery_height = page.locator("#gallery").bounding_box()["height"]
            thumbnail_height = page.locator("#gallery img").first.bounding_box()["height"]
            sources = [image.get_attribute("src") for image in page.locator("#gallery img").all()]
            served = [len(page.request.get(source).body()) for source in sources]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "space.png"), full_page=True)

            steps.fill("5000")
            page.get_by_role("button", name="Generate").click()
            expect(page.get_by_text("Value 5000 is greater than maximum value 250")).to_be_visible(timeout=30_000)
            expect(captions).to_have_count(4)
            assert captions.all_inner_texts() == texts
            expect(page.locator("#gallery").get_by_text("Error")).to_have_count(0)
            steps.fill("5")
            page.get_by_role("button", name="Generate").click()
            expect(page.locator("#summary")).to_contain_text("over 2 image(s)", timeout=60_000)
            expect(page.locator("#summary")).not_to_contain_text("Still sampling", timeout=30_000)
        finally:
            browser.close()
    assert [text.split(": ")[0] for text in texts] == [
        "seed 0, fine-tuned",
        "seed 0, base",
        "seed 1, fine-tuned",
        "seed 1, base",
    ], texts
    assert truncated == [False] * 4, texts
    assert gallery_height < 1.5 * thumbnail_height, (gallery_height, thumbnail_height)
    assert served == [caption_bytes(text) for text in texts]  # the browser gets the measured files


@pytest.mark.slow
def test_browser_shows_eta_for_ddim_only_and_the_captions_name_the_sampler(space_url):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (set CHROMIUM_PATH); CI installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(space_url)
            eta = page.locator("#eta input[type=number]")
            expect(eta).to_be_visible()  # DDIM, the default
            page.get_by_role("radio", name="PNDM").check()
            expect(eta).to_be_hidden()
            page.get_by_role("radio", name="DDIM").check()
            expect(eta).to_be_visible()
            page.locator("#steps input[type=number]").fill("3")
            eta.fill("0.5")
            images = page.locator("#num-images input[type=number]")
            images.fill("1")
            images.press("Enter")
            page.get_by_role("button", name="Generate").click()
            captions = page.locator("#gallery .caption-label")
            expect(captions).to_have_count(2, timeout=60_000)
            summary = page.locator("#summary")
            expect(summary).not_to_contain_text("Still sampling", timeout=30_000)
            expect(summary).to_contain_text("with DDIM, 3 steps, eta 0.5: mean JPEG size")
            texts = captions.all_inner_texts()
            truncated = captions.evaluate_all("labels => labels.map(label => label.scrollWidth > label.clientWidth)")
        finally:
            browser.close()
    assert [text.split(": ")[0] for text in texts] == ["seed 0, fine-tuned", "seed 0, base"], texts
    assert all(text.endswith("kB (DDIM, 3 steps, eta 0.5)") for text in texts), texts
    assert truncated == [False, False], texts
