"""`--algorithm nft`: the DiffusionNFT loss by hand, and NFT runs on tiny models (resume, reload, learning)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, PNDMPipeline
from safetensors.torch import load_file

from ddpo_hub.training.config import resolve_config
from ddpo_hub.training.losses import nft_loss, optimality
from ddpo_hub.training.nft import NFTTrainer
from ddpo_hub.training.run_folder import latest_checkpoint, read_metrics
from ddpo_hub.training.workflow import trainer_class
from tests.helpers import FAST_NFT, interrupting_reward


def _train(base: str, run_dir: Path, **overrides) -> Path:
    config = resolve_config(overrides={"base_model": base, "output_dir": str(run_dir), **FAST_NFT, **overrides})
    return trainer_class(config.algorithm)(config).train()


def test_nft_loss_matches_a_hand_computation():
    # One pixel per sample keeps the hand computation short; a = alpha_prod at the sample's timestep.
    a = torch.tensor([0.64, 0.36])  # sqrt: 0.8 and 0.6; sqrt(1 - a): 0.6 and 0.8
    clean = torch.tensor([0.5, -0.2]).view(2, 1, 1, 1)
    noisy = torch.tensor([0.7, 0.1]).view(2, 1, 1, 1)
    eps_theta = torch.tensor([0.4, -0.3]).view(2, 1, 1, 1)
    eps_old = torch.tensor([0.2, 0.1]).view(2, 1, 1, 1)
    r = torch.tensor([1.0, 0.25])
    beta, clip = 0.5, 2.0

    def half(eps: float, x_t: float, x0: float, alpha: float) -> float:
        error = (x_t - math.sqrt(1 - alpha) * eps) / math.sqrt(alpha) - x0  # x0(eps) - x0
        return error**2 / max(abs(error), 1e-5)  # adaptive weight: the error's own magnitude

    expected = []
    for i in range(2):
        theta, old, x_t, x0, alpha = (float(v.flatten()[i]) for v in (eps_theta, eps_old, noisy, clean, a))
        positive = half(beta * theta + (1 - beta) * old, x_t, x0, alpha)
        negative = half((1 + beta) * old - beta * theta, x_t, x0, alpha)
        expected.append(clip * (r[i].item() * positive + (1 - r[i].item()) * negative) / beta)
    terms = nft_loss(eps_theta, eps_old, noisy, clean, a, r, beta, clip)
    assert terms.loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_the_gradient_pulls_towards_high_reward_images_and_away_from_low_ones():
    a = torch.tensor([0.5])
    clean, noise = torch.full((1, 1, 2, 2), 0.3), torch.full((1, 1, 2, 2), -0.4)
    noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
    eps_old = noise + 0.1  # the old policy misses the true noise a little
    for r, towards in ((1.0, True), (0.0, False)):
        eps_theta = eps_old.clone().requires_grad_(True)
        nft_loss(eps_theta, eps_old, noisy, clean, a, torch.tensor([r]), 1.0, 1.0).loss.backward()
        step = -eps_theta.grad  # gradient descent's direction
        assert bool((step * (noise - eps_old)).sum() > 0) is towards


def test_optimality_maps_clipped_advantages_onto_the_unit_interval():
    advantages = torch.tensor([-7.0, -2.5, 0.0, 2.5, 7.0])
    assert optimality(advantages, 5.0).tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.fixture(scope="module")
def nft_run(tiny_pipeline_dir, tmp_path_factory) -> Path:
    return _train(tiny_pipeline_dir, tmp_path_factory.mktemp("nft"))


def test_nft_run_saves_stock_pipelines_with_changed_weights_and_fidelity_metrics(nft_run, tiny_pipeline_dir):
    for pipeline_class in (DDPMPipeline, DDIMPipeline, PNDMPipeline):
        pipeline = pipeline_class.from_pretrained(nft_run)
        images = pipeline(batch_size=1, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
        assert images[0].size == (16, 16)
    base = load_file(Path(tiny_pipeline_dir) / "unet" / "diffusion_pytorch_model.safetensors")
    tuned = load_file(nft_run / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(base[name], tuned[name]) for name in base)
    rows = read_metrics(nft_run)
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert {"nft_positive", "nft_negative", "ssim_to_base", "diversity_vs_base"} <= set(row)
        assert "kl_to_base" not in row, "eta 0 rollouts are deterministic: there is no step policy to compare"


def test_interrupted_and_resumed_nft_run_matches_the_uninterrupted_one(nft_run, tiny_pipeline_dir, tmp_path):
    resumed = tmp_path / "resumed"
    reward = interrupting_reward()  # its 4th call dies: epoch 2's second batch
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_pipeline_dir, resumed, reward=reward)
    assert latest_checkpoint(resumed).name == "checkpoint_1"
    _train(tiny_pipeline_dir, resumed, reward=reward, resume="latest")
    expected = load_file(nft_run / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_nft_checkpoints_its_old_policy(tiny_pipeline_dir, tmp_path):
    config = resolve_config(overrides={"base_model": tiny_pipeline_dir, "output_dir": str(tmp_path), **FAST_NFT})
    trainer = NFTTrainer(config)
    trainer.train()
    old = {name: value.clone() for name, value in trainer.old_unet.state_dict().items()}
    reloaded = NFTTrainer(resolve_config(overrides={**config.to_dict(), "resume": "latest"}))
    reloaded.accelerator.load_state(str(latest_checkpoint(tmp_path)))
    assert all(torch.equal(old[name], value) for name, value in reloaded.old_unet.state_dict().items())


@pytest.mark.slow
def test_nft_raises_the_reward_of_the_bundled_model(tmp_path):
    """A few NFT epochs on the bundled base with a fixed seed push the JPEG reward up."""
    overrides = dict(
        output_dir=str(tmp_path / "run"), algorithm="nft", epochs=3, num_steps=10, eta=0.0, num_samples=32,
        sample_batch_size=16, train_batch_size=16, gradient_accumulation_steps=1, timestep_fraction=0.5,
        learning_rate=1e-5, grid_size=2, fidelity_num_images=0,
    )  # fmt: skip
    trainer_class("nft")(resolve_config(preset="tiny", overrides=overrides)).train()
    rewards = [row["reward_mean"] for row in read_metrics(tmp_path / "run")]
    assert rewards[-1] > rewards[0], rewards
