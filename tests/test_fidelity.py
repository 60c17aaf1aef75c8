"""What a fine-tune costs: the fidelity figures against independent computations, the KL term, the KL leash."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from skimage.metrics import structural_similarity

from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.ddpo import train
from ddpo_hub.training.fidelity import colour_spread, diversity, fidelity_to_base, ssim_to_base, to_unit_rgb
from ddpo_hub.training.losses import gaussian_kl
from ddpo_hub.training.pipelines import load_unet_and_scheduler_config
from ddpo_hub.training.run_folder import read_metrics
from ddpo_hub.training.sampling import StochasticSampler
from tests.helpers import TINY_UNET_CONFIG

FIDELITY_KEYS = ("ssim_to_base", "diversity_vs_base", "colour_spread_vs_base", "kl_to_base", "jpeg_change_vs_base")


def _images(seed: int, count: int = 5, size: int = 16) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def _unit(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64) / 255.0


def test_ssim_is_scikit_images_on_the_uint8_pictures_scaled_to_unit_range():
    images, base = _images(0), _images(1)
    expected = np.mean(
        [
            structural_similarity(_unit(a), _unit(b), channel_axis=2, data_range=1.0)
            for a, b in zip(images, base, strict=True)
        ]
    )
    assert ssim_to_base(images, base) == pytest.approx(expected, abs=1e-12)
    assert ssim_to_base(images, images) == pytest.approx(1.0)


def test_model_space_tensors_are_compared_as_the_pipeline_converts_them():
    tensor = torch.rand(2, 3, 8, 8) * 2.4 - 1.2  # a little outside [-1, 1], as samples are
    expected = ((tensor / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy().astype(np.float64) / 255
    assert np.array_equal(to_unit_rgb(tensor), expected)


def test_diversity_is_the_mean_pairwise_distance_of_8x8_block_means():
    images = _images(2, count=4)
    small = []
    for image in images:
        pixels = _unit(image)
        small.append(
            np.array(
                [[pixels[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(axis=(0, 1)) for c in range(8)] for r in range(8)]
            )
        )
    distances = [math.dist(a.ravel(), b.ravel()) for a, b in itertools.combinations(small, 2)]
    assert diversity(images) == pytest.approx(sum(distances) / len(distances), rel=1e-12)
    assert diversity([images[0]] * 3) == 0.0


def test_colour_spread_is_the_std_of_the_images_mean_colours():
    images = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255), (255, 255, 255))]
    means = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float64)
    per_channel = [math.sqrt(sum((v - column.mean()) ** 2 for v in column) / 3) for column in means.T]
    assert colour_spread(images) == pytest.approx(sum(per_channel) / 3)


def test_against_itself_a_set_costs_nothing_and_a_flat_set_loses_diversity_and_colour():
    images = _images(3, count=6)
    assert fidelity_to_base(images, images) == pytest.approx(
        {"ssim_to_base": 1.0, "diversity_vs_base": 1.0, "colour_spread_vs_base": 1.0, "edge_sharpness_vs_base": 1.0}
    )
    flat = [Image.new("RGB", (16, 16), (90, 60, 160))] * 6
    cost = fidelity_to_base(flat, images)
    assert cost["diversity_vs_base"] == 0.0 and cost["colour_spread_vs_base"] == pytest.approx(0.0, abs=1e-12)
    assert cost["ssim_to_base"] < 0.1 and cost["edge_sharpness_vs_base"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="Cannot pair"):
        ssim_to_base(images[:2], images[:3])


def test_gaussian_kl_matches_the_closed_form_by_hand():
    mean = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]], [[[3.0, 3.0]]]])
    reference = torch.tensor([[[[0.0, 0.0]]], [[[0.5, -0.5]]], [[[0.0, 0.0]]]])
    std = torch.tensor([0.5, 2.0, 0.0])
    # sample 0: ((1^2 + 2^2) / 2) / (2 * 0.25) = 5; sample 1: (0.25 + 0.25) / 2 / 8 = 1 / 32; sample 2: std 0 -> 0
    assert gaussian_kl(mean, reference, std).tolist() == pytest.approx([5.0, 1 / 32, 0.0])


def test_rollout_records_each_steps_kl_to_the_reference(tiny_pipeline_dir):
    unet, scheduler_config = load_unet_and_scheduler_config(tiny_pipeline_dir)
    sampler = StochasticSampler(scheduler_config, kind="ddim", num_steps=4, eta=1.0)
    noise = torch.randn((3, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    itself = sampler.rollout(unet, noise, generator=torch.Generator().manual_seed(1), reference=unet)
    assert torch.equal(itself.kl_to_reference, torch.zeros(3, 4))

    torch.manual_seed(5)
    other = UNet2DModel(**TINY_UNET_CONFIG).eval()
    rollout = sampler.rollout(unet, noise, generator=torch.Generator().manual_seed(1), reference=other)
    step = 1
    index = torch.full((3,), step)
    with torch.no_grad():
        mean = sampler.predict_mean(unet, rollout.latents[:, step], index)
        reference = sampler.predict_mean(other, rollout.latents[:, step], index)
    expected = ((mean - reference) ** 2).mean(dim=(1, 2, 3)) / (2 * sampler.step_std[step] ** 2)
    assert torch.allclose(rollout.kl_to_reference[:, step], expected, rtol=1e-5)
    assert torch.equal(rollout.latents, itself.latents), "the reference never changes the sampled trajectory"


LEASH = dict(
    epochs=4,
    num_samples=8,
    sample_batch_size=8,
    train_batch_size=4,
    gradient_accumulation_steps=2,  # one optimizer step per epoch: every re-scored step is on-policy
    num_steps=4,
    learning_rate=3e-3,
    grid_size=4,
    fidelity_num_images=4,
)


@pytest.fixture(scope="module")
def leash_runs(tiny_pipeline_dir, tmp_path_factory):
    runs = {}
    for kl_coef in (0.0, 100.0):
        run_dir = tmp_path_factory.mktemp(f"kl{kl_coef:g}")
        config = dict(LEASH, base_model=tiny_pipeline_dir, output_dir=str(run_dir), kl_coef=kl_coef)
        train(resolve_config(overrides=config))
        runs[kl_coef] = read_metrics(run_dir)
    return runs


def test_every_epoch_logs_what_the_model_costs(leash_runs):
    for rows in leash_runs.values():
        for row in rows:
            assert all(key in row and math.isfinite(row[key]) for key in FIDELITY_KEYS), row
            assert -1 <= row["ssim_to_base"] <= 1 and row["kl_to_base"] >= 0


def test_kl_leash_keeps_the_ratio_exactly_one_and_the_policy_near_the_base(leash_runs):
    free, leashed = leash_runs[0.0], leash_runs[100.0]
    for row in leashed:  # one optimizer step per epoch, taken after every step was re-scored: ratio exactly 1
        assert row["approx_kl"] == 0.0 and row["clipfrac"] == 0.0
    assert leashed[0]["kl_penalty"] == 0.0, "before the first update the policy is the base"
    assert leashed[-1]["kl_penalty"] > 0.0 and free[-1]["kl_penalty"] == 0.0
    assert leashed[-1]["kl_to_base"] < 0.5 * free[-1]["kl_to_base"]
