"""The sampler's Gaussian policy against diffusers' schedulers and torch.distributions."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ddpo_hub.training.sampling import StochasticSampler
from tests.helpers import make_tiny_pipeline


@pytest.fixture(scope="module")
def pipeline():
    return make_tiny_pipeline(seed=3)


def _noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("set_alpha_to_one, steps_offset", [(True, 0), (False, 1)])
def test_ddim_step_matches_diffusers_with_recorded_noise(pipeline, set_alpha_to_one, steps_offset):
    config = {key: value for key, value in pipeline.scheduler.config.items() if not key.startswith("_")}
    config.update(set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset)
    sampler = StochasticSampler(config, kind="ddim", num_steps=8, eta=1.0)
    rollout = sampler.rollout(pipeline.unet, _noise((3, 3, 16, 16), 0), generator=torch.Generator().manual_seed(1))

    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(8)
    step_noise = torch.Generator().manual_seed(1)
    sample = rollout.latents[:, 0]
    for index, timestep in enumerate(reference.timesteps):
        with torch.no_grad():
            output = pipeline.unet(sample, timestep).sample
        variance_noise = torch.randn(sample.shape, generator=step_noise)
        sample = reference.step(output, timestep, sample, eta=1.0, variance_noise=variance_noise).prev_sample
        torch.testing.assert_close(rollout.latents[:, index + 1], sample, rtol=1e-5, atol=1e-5)
    # diffusers gives the last DDIM step of a DDPM config zero variance: it must not be trained on.
    assert bool(rollout.trainable[-1]) is (not set_alpha_to_one)
    assert torch.isfinite(rollout.log_probs).all()


def test_ddpm_step_matches_diffusers(pipeline):
    config = dict(pipeline.scheduler.config)
    sampler = StochasticSampler(config, kind="ddpm", num_steps=10)
    reference = DDPMScheduler.from_config(config)
    reference.set_timesteps(10)
    sample = _noise((2, 3, 16, 16), 5)
    for index, timestep in enumerate(reference.timesteps):
        with torch.no_grad():
            output = pipeline.unet(sample, timestep).sample
        step_index = torch.full((2,), index)
        mean = sampler.step_mean(output, sample, step_index)
        # DDPMScheduler draws its noise from the generator after computing the mean: replay the same draw.
        expected = reference.step(output, timestep, sample, generator=torch.Generator().manual_seed(index))
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(index))
        ours = mean + sampler.step_std[index] * noise if timestep > 0 else mean
        torch.testing.assert_close(ours, expected.prev_sample, rtol=1e-5, atol=1e-5)
        sample = expected.prev_sample
    assert not sampler.trainable[-1], "DDPM's t=0 step is deterministic"
    assert sampler.trainable[:-1].all()


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_log_prob_is_the_mean_gaussian_log_density(pipeline, kind):
    sampler = StochasticSampler(dict(pipeline.scheduler.config), kind=kind, num_steps=6, eta=0.7)
    mean = _noise((4, 3, 16, 16), 7)
    next_sample = _noise((4, 3, 16, 16), 8) * 0.3 + mean
    step_index = torch.tensor([0, 2, 3, 4])
    std = sampler.step_std[step_index].view(-1, 1, 1, 1)
    expected = torch.distributions.Normal(mean, std).log_prob(next_sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(sampler.log_prob(next_sample, mean, step_index), expected)


def test_deterministic_last_step_has_zero_log_prob_and_no_nan(pipeline):
    sampler = StochasticSampler(dict(pipeline.scheduler.config), kind="ddim", num_steps=4)
    assert sampler.step_std[-1] == 0
    rollout = sampler.rollout(pipeline.unet, _noise((2, 3, 16, 16), 0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(rollout.log_probs[:, -1], torch.zeros(2))
    assert torch.isfinite(rollout.log_probs).all()


def test_steps_with_tiny_noise_are_recorded_but_not_trained(pipeline):
    config = dict(pipeline.scheduler.config)
    sampler = StochasticSampler(config, kind="ddim", num_steps=20, eta=1.0, min_train_std=0.05)
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(20)
    step = config["num_train_timesteps"] // 20
    std = torch.stack([reference._get_variance(t, t - step).sqrt() for t in reference.timesteps]).float()
    torch.testing.assert_close(sampler.step_std, std)
    assert torch.equal(sampler.trainable, std > 0.05)
    # On DDPM's schedule only the last stochastic step (t = 50 -> 0, std ~0.01) and the final one drop out.
    assert sampler.trainable[:-2].all() and not sampler.trainable[-2:].any()
    assert 0 < std[-2] < 0.05 < std[-3]
    rollout = sampler.rollout(pipeline.unet, _noise((2, 3, 16, 16), 0), generator=torch.Generator().manual_seed(0))
    assert (rollout.log_probs[:, -2] != 0).all(), "an untrained stochastic step still records its log-prob"
    assert torch.equal(rollout.trainable, sampler.trainable)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rescoring_recorded_steps_gives_ratio_exactly_one(pipeline, precision):
    """Per-sample shuffled timesteps, re-scored in the sampler's forward chunks as the trainer does."""

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    sampler = StochasticSampler(dict(pipeline.scheduler.config), kind="ddim", num_steps=10, eta=1.0)
    rollout = sampler.rollout(
        pipeline.unet,
        _noise((8, 3, 16, 16), 0),
        generator=torch.Generator().manual_seed(1),
        autocast=autocast,
        forward_batch_size=4,
    )
    step_index = torch.tensor([8, 0, 3, 3, 6, 1, 0, 5])
    for rows in (torch.arange(4, 8), torch.arange(0, 4)):
        with torch.no_grad():
            log_prob = sampler.score_step(
                pipeline.unet,
                rollout.latents[rows, step_index[rows]],
                step_index[rows],
                rollout.latents[rows, step_index[rows] + 1],
                autocast,
            )
        ratio = torch.exp(log_prob - rollout.log_probs[rows, step_index[rows]])
        assert torch.equal(ratio, torch.ones_like(ratio))


def _scheduler_config(pipeline, **changes) -> dict:
    config = {key: value for key, value in pipeline.scheduler.config.items() if not key.startswith("_")}
    config.update(changes)
    return config


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ddim_step_matches_diffusers_for_other_prediction_types(pipeline, prediction_type, eta):
    """The UNet's output read as x_0 or v: mean + std * noise is DDIMScheduler.step with the same noise."""
    config = _scheduler_config(pipeline, prediction_type=prediction_type, set_alpha_to_one=False, steps_offset=1)
    sampler = StochasticSampler(config, kind="ddim", num_steps=8, eta=eta)
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(8)
    assert torch.equal(sampler.timesteps, reference.timesteps.long())
    sample = _noise((2, 3, 16, 16), 11)
    for index, timestep in enumerate(reference.timesteps):
        with torch.no_grad():
            output = pipeline.unet(sample, timestep).sample
        variance_noise = _noise(sample.shape, 100 + index)
        expected = reference.step(output, timestep, sample, eta=eta, variance_noise=variance_noise).prev_sample
        mean = sampler.step_mean(output, sample, torch.full((2,), index))
        torch.testing.assert_close(mean + sampler.step_std[index] * variance_noise, expected, rtol=1e-5, atol=1e-5)
        sample = expected
    assert sampler.step_std.min() > 0, "with steps_offset=1 and no alpha_prod=1 at the end, every step is stochastic"


@pytest.mark.parametrize(
    "prediction_type, variance_type",
    [("sample", "fixed_small"), ("v_prediction", "fixed_small"), ("epsilon", "fixed_large"), ("sample", "fixed_large")],
)
def test_ddpm_step_matches_diffusers_for_other_prediction_and_variance_types(pipeline, prediction_type, variance_type):
    config = _scheduler_config(pipeline, prediction_type=prediction_type, variance_type=variance_type)
    sampler = StochasticSampler(config, kind="ddpm", num_steps=10)
    reference = DDPMScheduler.from_config(config)
    reference.set_timesteps(10)
    sample = _noise((2, 3, 16, 16), 12)
    for index, timestep in enumerate(reference.timesteps):
        with torch.no_grad():
            output = pipeline.unet(sample, timestep).sample
        mean = sampler.step_mean(output, sample, torch.full((2,), index))
        # DDPMScheduler draws its noise from the generator after computing the mean: replay the same draw.
        expected = reference.step(output, timestep, sample, generator=torch.Generator().manual_seed(index))
        noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(index))
        ours = mean + sampler.step_std[index] * noise if timestep > 0 else mean
        torch.testing.assert_close(ours, expected.prev_sample, rtol=1e-5, atol=1e-5)
        sample = expected.prev_sample
    # fixed_large is beta_t, fixed_small beta-tilde_t < beta_t: the sampler's std follows the config.
    betas = 1 - reference.alphas_cumprod[reference.timesteps] / reference.alphas_cumprod[reference.timesteps - 100]
    if variance_type == "fixed_large":
        torch.testing.assert_close(sampler.step_std[:-1], betas[:-1].sqrt().float())
    else:
        assert (sampler.step_std[:-1] < betas[:-1].sqrt()).all()
    assert sampler.step_std[-1] == 0 and not sampler.trainable[-1]


def test_max_train_std_leaves_only_the_later_less_noisy_steps_to_train(pipeline):
    config = dict(pipeline.scheduler.config)
    every = StochasticSampler(config, kind="ddim", num_steps=20, eta=1.0, min_train_std=0.05)
    late = StochasticSampler(config, kind="ddim", num_steps=20, eta=1.0, min_train_std=0.05, max_train_std=0.4)
    assert torch.equal(late.trainable, every.trainable & (every.step_std <= 0.4))
    first = int(torch.nonzero(late.trainable)[0])
    assert every.step_std[first - 1] > 0.4 >= every.step_std[first], "the noisy early steps are the ones left out"
    assert late.trainable[first:-2].all()
