"""The rewards against a literal Pillow JPEG save, and custom `module:function` rewards."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo_hub.training.rewards import REWARDS, jpeg_compressibility, jpeg_incompressibility, load_reward


def _images(seed: int = 0, shape: tuple[int, ...] = (4, 3, 24, 16)) -> torch.Tensor:
    """Model-space images in [-1, 1], spilling past both ends (the conversion clamps) and not square."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2.2 - 1.1


def _pillow_jpeg_sizes(images: torch.Tensor) -> list[int]:
    """The reward spelled out: DDPMPipeline's uint8 conversion and ddpo-pytorch's Pillow save (quality 95)."""
    pixels = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    sizes = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95, subsampling="4:2:0")
        sizes.append(len(buffer.getvalue()))
    return sizes


def test_compressibility_is_minus_the_kilobytes_of_a_pillow_quality_95_jpeg():
    images = _images()
    expected = _pillow_jpeg_sizes(images)
    assert len(set(expected)) > 1, "the images should differ in size, so a mix-up of the order would show"
    rewards, info = jpeg_compressibility()(images)
    assert info["jpeg_bytes"].tolist() == expected
    np.testing.assert_array_equal(rewards, -np.asarray(expected) / 1000)
    # One image at a time (no thread pool) gives the same bytes.
    rewards_serial, _ = jpeg_compressibility(max_workers=1)(images[:1])
    assert rewards_serial.tolist() == [-expected[0] / 1000]


def test_incompressibility_is_minus_compressibility():
    images = _images(seed=1)
    plus, plus_info = jpeg_incompressibility()(images)
    minus, minus_info = jpeg_compressibility()(images)
    np.testing.assert_array_equal(plus, -minus)
    np.testing.assert_array_equal(plus_info["jpeg_bytes"], minus_info["jpeg_bytes"])
    assert (plus > 0).all()


def mean_pixel_reward(images: torch.Tensor) -> torch.Tensor:
    """A custom reward returning a tensor (with grad history, on the images' dtype)."""
    return images.mean(dim=(1, 2, 3)) * 2


def list_reward(images: torch.Tensor) -> list[float]:
    return [float(index) for index in range(images.shape[0])]


def short_reward(images: torch.Tensor) -> list[float]:
    return [0.0] * (images.shape[0] - 1)


not_a_function = 3


def test_custom_reward_returning_a_tensor():
    images = _images(seed=2).requires_grad_(True)
    rewards, info = load_reward("tests.test_rewards:mean_pixel_reward")(images)
    assert info == {}
    assert rewards.dtype == np.float64 and rewards.shape == (4,)
    expected = [2 * float(np.mean(image)) for image in images.detach().numpy()]
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)


def test_custom_reward_returning_a_list():
    rewards, info = load_reward("tests.test_rewards:list_reward")(_images(seed=3))
    assert rewards.tolist() == [0.0, 1.0, 2.0, 3.0] and info == {}


def test_custom_reward_with_the_wrong_number_of_values_is_rejected():
    reward = load_reward("tests.test_rewards:short_reward")
    with pytest.raises(ValueError, match=r"returned 3 values for 4 images"):
        reward(_images())


@pytest.mark.parametrize(
    "name, message",
    [
        ("tests.test_rewards:no_such_reward", "Cannot load custom reward 'tests.test_rewards:no_such_reward'"),
        ("tests.no_such_module:reward", "Cannot load custom reward 'tests.no_such_module:reward'"),
        ("tests.test_rewards:not_a_function", "is not callable"),
    ],
)
def test_custom_reward_that_cannot_be_loaded_is_named(name, message):
    with pytest.raises(ValueError, match=message):
        load_reward(name)


def test_unknown_reward_name_lists_the_built_ins():
    with pytest.raises(ValueError, match="Unknown reward 'aesthetic'") as error:
        load_reward("aesthetic")
    assert set(REWARDS) == {"jpeg_compressibility", "jpeg_incompressibility"}
    for name in REWARDS:
        assert name in str(error.value)
    assert "module:function" in str(error.value)
