"""Whether the subject survived: edge sharpness, the subject judge's figures and KID in its features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy import ndimage

from ddpo_hub.training.fidelity import edge_sharpness, fidelity_to_base, subject_figures
from ddpo_hub.training.judge import CLASSES, NO_SUBJECT, SubjectJudge, draw_shapes, load_judge
from ddpo_hub.training.pipelines import BUNDLED_MODELS_DIR

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
