"""The pretraining script's data set and training loop, and the small DDPM it produced that the repo ships."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.pipelines import TINY_BASE_MODEL
from ddpo_hub.training.pretrain_base import (
    PHOTOS,
    build_texture_dataset,
    crop_box,
    dataset_to_tensor,
    load_photo,
    main,
    make_scheduler,
    render_crop,
    train,
)


@pytest.fixture(scope="module")
def crops():
    return build_texture_dataset(96, size=32, seed=3)


def test_dataset_is_deterministic_32px_rgb_with_a_spread_of_jpeg_sizes(crops):
    assert len(crops) == 96
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in crops["image"])
    again = build_texture_dataset(96, size=32, seed=3)
    assert torch.equal(dataset_to_tensor(crops), dataset_to_tensor(again))
    other = build_texture_dataset(96, size=32, seed=4)
    assert not torch.equal(dataset_to_tensor(crops), dataset_to_tensor(other))
    assert len(set(crops["source"])) >= 6
    sizes = np.array(jpeg_sizes(crops["image"]))
    # At 32x32 the JPEG header alone is ~640 bytes: smooth crops sit near it, busy textures far above.
    assert sizes.min() < 850
    assert sizes.max() > 1300
    assert sizes.std() > 100


def test_parallel_build_keeps_every_crop_in_its_planned_order(crops):
    """The thread pool only resizes: crop i is what the i-th draw of the seed's generator asks for."""
    rng = np.random.default_rng(3)
    names = list(PHOTOS)
    weights = np.array([PHOTOS[name] for name in names])
    picks = rng.choice(len(names), size=96, p=weights / weights.sum())
    photos = {name: Image.fromarray(load_photo(name)) for name in set(crops["source"])}
    for index, pick in enumerate(picks):
        photo = photos[names[pick]]
        box, mirror = crop_box(photo.width, photo.height, 32, rng)
        assert crops["source"][index] == names[pick]
        expected = np.asarray(render_crop(photo, box, mirror, 32))
        assert np.array_equal(np.asarray(crops["image"][index].convert("RGB")), expected)


def test_dataset_to_tensor_layout(crops):
    images = dataset_to_tensor(crops)
    assert images.shape == (96, 3, 32, 32)
    assert images.dtype == torch.uint8


def _tiny_unet() -> UNet2DModel:
    """A two-level UNet small enough to train a few steps in a test, the same weights every call."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=32, layers_per_block=1, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2, norm_num_groups=4, add_attention=False,
    )  # fmt: skip


def test_train_lowers_the_loss_and_returns_ema_weights(crops):
    unet = _tiny_unet()
    before = [p.detach().clone() for p in unet.parameters()]
    losses = train(
        unet, make_scheduler(), dataset_to_tensor(crops), steps=40, batch_size=16, learning_rate=3e-3,
        warmup_steps=5, log_every=20,
    )  # fmt: skip
    assert len(losses) == 40
    assert all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert not unet.training
    assert any(not torch.equal(a, b) for a, b in zip(before, unet.parameters(), strict=True))


def test_time_limit_stops_at_the_first_log_after_it(crops):
    unet = _tiny_unet()
    losses = train(unet, make_scheduler(), dataset_to_tensor(crops), steps=30, batch_size=4, log_every=5, time_limit=0)
    assert len(losses) == 5
    assert not unet.training


def _timesteps_seen(crops, **options) -> torch.Tensor:
    """Every timestep `train` noises a batch at, read off the scheduler it is given."""
    scheduler, seen = make_scheduler(), []
    add_noise = scheduler.add_noise

    def recording_add_noise(clean, noise, timesteps):
        seen.append(timesteps.clone())
        return add_noise(clean, noise, timesteps)

    scheduler.add_noise = recording_add_noise
    train(_tiny_unet(), scheduler, dataset_to_tensor(crops), steps=25, batch_size=16, log_every=25, **options)
    return torch.cat(seen)


def test_low_timestep_fraction_draws_that_share_of_each_batch_below_the_cutoff(crops):
    uniform = _timesteps_seen(crops)
    assert torch.equal(uniform, _timesteps_seen(crops, low_timestep_fraction=0.0))  # off: the same random stream
    assert (uniform < 50).float().mean() < 0.15  # 5% expected of 400 uniform draws
    mixed = _timesteps_seen(crops, low_timestep_fraction=0.5, low_timestep_max=50)
    assert 0.4 < (mixed < 50).float().mean() < 0.65  # 0.5 + 0.5 * 5% expected
    assert mixed.max() >= 500  # the other half still spans the whole schedule
    only_low = _timesteps_seen(crops, low_timestep_fraction=1.0, low_timestep_max=50)
    assert only_low.max() < 50 and len(only_low.unique()) > 25


def test_out_of_range_timestep_options_and_unknown_schedule_are_rejected(crops):
    images = dataset_to_tensor(crops)
    for options, message in [
        ({"low_timestep_fraction": 1.5}, "low_timestep_fraction must be between 0 and 1, got 1.5"),
        ({"low_timestep_fraction": -0.1}, "low_timestep_fraction must be between 0 and 1"),
        ({"low_timestep_max": 0}, "low_timestep_max must be between 1 and 1000, got 0"),
        ({"lr_scheduler": "warm"}, "unknown lr_scheduler 'warm'; choose one of cosine, linear"),
    ]:
        with pytest.raises(ValueError, match=message):
            train(_tiny_unet(), make_scheduler(), images, steps=1, batch_size=2, **options)


def _learning_rates(crops, monkeypatch, **options) -> list[float]:
    """The learning rate of every optimizer step `train` takes."""
    rates: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    train(_tiny_unet(), make_scheduler(), dataset_to_tensor(crops), steps=20, batch_size=2, learning_rate=1e-3,
          warmup_steps=4, log_every=20, **options)  # fmt: skip
    return rates


def test_lr_scheduler_shapes_the_learning_rate(crops, monkeypatch):
    cosine = _learning_rates(crops, monkeypatch)
    assert cosine[:4] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4])  # linear warmup
    assert cosine[4] == pytest.approx(1e-3)
    assert cosine[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))  # half a cosine to 0
    constant = _learning_rates(crops, monkeypatch, lr_scheduler="constant_with_warmup")
    assert constant[:4] == cosine[:4]
    assert constant[4:] == pytest.approx([1e-3] * 16)


def test_main_saves_a_pipeline_folder_that_reloads(tmp_path):
    out = tmp_path / "tiny"
    threads = str(torch.get_num_threads())  # main() sets the thread count; keep the session's
    main(["--output-dir", str(out), "--num-images", "32", "--steps", "2", "--batch-size", "4", "--channels", "8", "16",
          "--threads", threads])  # fmt: skip
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipeline = DDPMPipeline.from_pretrained(out)
    assert pipeline.unet.config.block_out_channels == [8, 16]
    assert isinstance(pipeline.scheduler, DDPMScheduler)


def test_main_init_from_continues_an_existing_pipeline(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    threads = str(torch.get_num_threads())
    common = ["--num-images", "32", "--batch-size", "4", "--threads", threads]
    main(["--output-dir", str(first), "--steps", "2", "--channels", "8", "16", *common])
    main(["--output-dir", str(second), "--steps", "1", "--init-from", str(first), "--learning-rate", "1e-3",
          "--warmup-steps", "0", "--low-timestep-fraction", "0.5", *common])  # fmt: skip
    before = UNet2DModel.from_pretrained(first, subfolder="unet")
    after = DDPMPipeline.from_pretrained(second).unet
    assert after.config.block_out_channels == [8, 16]  # the folder's architecture, not --channels' default
    changes = [(a - b).abs().max().item() for a, b in zip(before.parameters(), after.parameters(), strict=True)]
    # One AdamW step of 1e-3 moves each weight by at most ~1e-3 (+ decay): continued, not re-initialised.
    assert 0 < max(changes) < 5e-3


def test_shipped_model_loads_is_small_and_generates_32px_images():
    files = [path for path in TINY_BASE_MODEL.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 10 * 1024 * 1024
    assert (TINY_BASE_MODEL / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not any(path.suffix == ".bin" for path in files)
    pipeline = DDPMPipeline.from_pretrained(TINY_BASE_MODEL)
    config = pipeline.scheduler.config
    assert (config.num_train_timesteps, config.beta_schedule, config.clip_sample) == (1000, "linear", True)
    assert config.prediction_type == "epsilon"
    images = pipeline(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0)).images
    assert [image.size for image in images] == [(32, 32), (32, 32)]
