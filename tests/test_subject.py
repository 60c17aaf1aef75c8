"""Whether the subject survived: edge sharpness, the subject judge's figures and KID in its features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline
from gradio_client import Client
from huggingface_hub import ModelCard
from PIL import Image, ImageFilter
from scipy import ndimage

from ddpo_hub.model_card.render import write_card
from ddpo_hub.space.app import build_demo
from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.ddpo import train
from ddpo_hub.training.evaluate import run_evaluation, write_evaluation
from ddpo_hub.training.fidelity import edge_sharpness, fidelity_to_base, subject_figures
from ddpo_hub.training.judge import CLASSES, NO_SUBJECT, SubjectJudge, draw_shapes, load_judge
from ddpo_hub.training.pipelines import BUNDLED_MODELS_DIR
from ddpo_hub.training.run_folder import read_metrics
from tests.helpers import free_port

SUBJECT_KEYS = {"subject_rate", "base_subject_rate", "subject_kept", "kid_to_base"}


def shapes(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [draw_shapes(32, rng) for _ in range(count)]


def test_edge_sharpness_is_the_90th_percentile_of_the_sobel_magnitude():
    images = shapes(4, seed=0)
    grey = [np.asarray(image, dtype=np.float64) / 255 @ np.array([0.2125, 0.7154, 0.0721]) for image in images]
    # scikit-image's Sobel: the kernel normalised by 4, the magnitude the root mean square of the two axes.
    magnitudes = [np.hypot(ndimage.sobel(g, axis=0), ndimage.sobel(g, axis=1)) / 4 / np.sqrt(2) for g in grey]
    assert edge_sharpness(images) == pytest.approx(np.percentile(np.stack(magnitudes), 90), rel=1e-9)


def test_a_blur_loses_edge_sharpness_and_the_same_set_keeps_it():
    images = shapes(8, seed=1)
    blurred = [image.filter(ImageFilter.GaussianBlur(1.5)) for image in images]
    assert fidelity_to_base(images, images)["edge_sharpness_vs_base"] == pytest.approx(1.0)
    assert fidelity_to_base(blurred, images)["edge_sharpness_vs_base"] < 0.7


def polynomial_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """The unbiased MMD^2 with the kernel (x.y / d + 1)^3 (Binkowski et al. 2018), written out by hand."""
    dimension = real.shape[1]

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / dimension + 1.0) ** 3

    m = len(real)
    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    within = (k_rr.sum() - np.trace(k_rr) + k_ff.sum() - np.trace(k_ff)) / (m * (m - 1))
    return float(within - 2 * k_rf.mean())


def test_kid_is_the_polynomial_mmd_of_the_judges_features():
    torch.manual_seed(0)
    judge = SubjectJudge().eval()
    base, model = shapes(10, seed=2), shapes(10, seed=3)
    figures = subject_figures(model, base, judge)
    with torch.no_grad():
        features = [
            judge.features(torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2) / 255.0)
            for images in (base, model)
        ]
    expected = polynomial_kid(*(f.double().numpy() for f in features))
    assert figures["kid_to_base"] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    state = torch.random.get_rng_state()
    subject_figures(model, base, judge)
    assert torch.equal(torch.random.get_rng_state(), state)  # the training's random stream is left untouched


def test_subject_figures_count_what_the_judge_calls_each_image():
    torch.manual_seed(0)
    judge = SubjectJudge().eval()
    with torch.no_grad():  # a judge that calls everything a face, then one that sees no subject anywhere
        judge.head.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0]))
    images = shapes(6, seed=4)
    assert subject_figures(images, images, judge) | {"kid_to_base": 0} == {
        "subject_rate": 1.0,
        "base_subject_rate": 1.0,
        "subject_kept": 1.0,
        "kid_to_base": 0,
    }
    with torch.no_grad():
        judge.head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 100.0]))
    figures = subject_figures(images, images, judge)
    assert CLASSES[-1] == NO_SUBJECT
    assert figures["subject_rate"] == 0.0 and np.isnan(figures["subject_kept"])  # no base subject to keep
    assert "kid_to_base" not in subject_figures(images[:1], images[:1], judge)  # KID compares pairs


def test_without_a_judge_the_subject_figures_are_absent():
    images = shapes(4, seed=5)
    assert SUBJECT_KEYS.isdisjoint(fidelity_to_base(images, images))
    assert load_judge(BUNDLED_MODELS_DIR / "tiny-textures-32") is None
    assert load_judge(None) is None


EMOJI_BASE = BUNDLED_MODELS_DIR / "tiny-emoji-32"


@pytest.fixture(scope="module")
def emoji_samples() -> list[Image.Image]:
    """16 samples of the bundled emoji base: DDIM 20 steps, eta 1, one generator."""
    pipeline = DDIMPipeline.from_pretrained(EMOJI_BASE)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline(batch_size=16, num_inference_steps=20, eta=1.0, generator=generator).images


def test_the_bundled_judge_sees_the_bases_subjects_and_not_their_flat_colours(emoji_samples):
    judge = load_judge(EMOJI_BASE)
    assert sum(p.numel() for p in judge.parameters()) * 4 <= 1024 * 1024  # at most 1 MB of fp32 weights
    same = subject_figures(emoji_samples, emoji_samples, judge)
    assert same["subject_kept"] == 1.0 and same["subject_rate"] >= 0.75
    flat = [
        Image.new("RGB", image.size, tuple(np.asarray(image).reshape(-1, 3).mean(0).astype(int)))
        for image in emoji_samples
    ]
    lost = subject_figures(flat, emoji_samples, judge)
    assert lost["subject_kept"] <= 0.25 and lost["subject_rate"] <= 0.25
    assert lost["kid_to_base"] > same["kid_to_base"] + 0.01


def test_an_emoji_run_reports_the_subject_in_metrics_evaluation_card_and_space(tmp_path, emoji_samples):
    run_dir = tmp_path / "run"
    config = resolve_config(
        overrides=dict(
            base_model="tiny-emoji-32", output_dir=str(run_dir), epochs=1, num_steps=3, num_samples=4,
            sample_batch_size=4, train_batch_size=4, fidelity_num_images=4, grid_size=2, eval_num_images=0,
        )
    )  # fmt: skip
    train(config)
    row = read_metrics(run_dir)[-1]
    assert SUBJECT_KEYS | {"edge_sharpness_vs_base"} <= set(row)

    results, samples = run_evaluation(str(run_dir), "tiny-emoji-32", schedulers=["ddim"], num_images=4,
                                      num_inference_steps={"ddim": 3})  # fmt: skip
    fidelity = results["schedulers"]["ddim"]["fidelity"]
    assert fidelity == pytest.approx(
        fidelity_to_base(samples["ddim"]["model"], samples["ddim"]["base"], load_judge(EMOJI_BASE))
    )
    write_evaluation(results, samples, run_dir / "eval_results.json")
    card = ModelCard.load(write_card(run_dir, run_dir))
    header = next(line for line in card.text.splitlines() if line.startswith("| Scheduler |"))
    row_text = next(line for line in card.text.splitlines() if line.startswith("| DDIM, eta 0 |"))
    cells = dict(zip(header.strip("|").split("|"), row_text.strip("|").split("|"), strict=True))
    assert float(cells[" Subject kept "]) == pytest.approx(fidelity["subject_kept"], abs=0.005)
    assert float(cells[" KID to base "]) == pytest.approx(fidelity["kid_to_base"], abs=0.0005)
    assert (EMOJI_BASE / "NOTICE").read_text().strip() in card.text  # the art's licence and attribution
    assert "subject_kept" in {result.metric_type for result in card.data.eval_results}

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        demo = build_demo(str(run_dir), device=torch.device("cpu"), examples_cache="off")
        demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, download_files=str(tmp_path / "downloads"), verbose=False)
        _, _, summary = client.predict(scheduler="DDIM", num_inference_steps=2, num_images=2, seed=0,
                                       api_name="/generate")  # fmt: skip
    finally:
        demo.close()
    assert "than the base model **tiny-emoji-32**" in summary
    assert "subject kept" in summary and "KID" in summary
