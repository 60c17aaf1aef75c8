"""What a fine-tune costs: how far its images moved from the base model's, and whether they still vary.

A smaller JPEG bought by turning every sample into a flat colour is reward hacking. These figures sit next
to every JPEG result (per epoch in `metrics.jsonl`, per scheduler in `eval_results.json`, on the card and in
the Space), always computed from two image sets drawn from the same seeds (same initial and per-step noise):

* `ssim_to_base`: mean SSIM (scikit-image, `channel_axis=2`, `data_range=1`) between each image and the base
  model's image of the same seed: 1 is unchanged, near 0 is a different picture.
* `diversity_vs_base`: mean pairwise Euclidean distance between the images box-downscaled to 8x8 RGB in
  [0, 1], fine-tuned over base: below 1 the samples look more alike than the base's.
* `colour_spread_vs_base`: standard deviation over the images of each image's mean RGB, averaged over the
  channels, fine-tuned over base: below 1 the samples drift towards one colour.

Images are compared as users see them: the uint8 pictures `DDPMPipeline` returns, scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from scipy.spatial.distance import pdist
from skimage.metrics import structural_similarity

from ddpo_hub.training.jpeg import to_pil

DIVERSITY_SIZE = 8
"""Images are box-downscaled to this many pixels a side before their distances are taken."""

Images = torch.Tensor | Sequence[Image.Image] | np.ndarray


def to_unit_rgb(images: Images) -> np.ndarray:
    """(N, H, W, 3) float64 in [0, 1] from model-space tensors in [-1, 1], PIL images or uint8 arrays."""
    if isinstance(images, torch.Tensor):
        images = to_pil(images)
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64)


def ssim_to_base(images: Images, base_images: Images) -> float:
    """Mean same-seed SSIM between `images[i]` and `base_images[i]`."""
    model, base = to_unit_rgb(images), to_unit_rgb(base_images)
    if model.shape != base.shape:
        raise ValueError(f"Cannot pair images of shape {model.shape} with base images of shape {base.shape}.")
    return float(
        np.mean([structural_similarity(a, b, channel_axis=2, data_range=1.0) for a, b in zip(model, base, strict=True)])
    )


def box_downscale(images: np.ndarray, size: int = DIVERSITY_SIZE) -> np.ndarray:
    """(N, size, size, 3): the mean of each block of pixels (PIL's box filter when the side is not a multiple)."""
    count, height, width, channels = images.shape
    if height % size == 0 and width % size == 0:
        blocks = images.reshape(count, size, height // size, size, width // size, channels)
        return blocks.mean(axis=(2, 4))
    return np.stack(
        [
            np.stack(
                [
                    np.asarray(Image.fromarray(channel.astype(np.float32)).resize((size, size), Image.BOX))
                    for channel in np.moveaxis(image, -1, 0)
                ],
                axis=-1,
            )
            for image in images
        ]
    ).astype(np.float64)


def diversity(images: Images) -> float:
    """Mean pairwise Euclidean distance between the images box-downscaled to 8x8 RGB in [0, 1]."""
    array = to_unit_rgb(images)
    if len(array) < 2:
        raise ValueError("Diversity needs at least two images.")
    return float(pdist(box_downscale(array).reshape(len(array), -1)).mean())


def colour_spread(images: Images) -> float:
    """Standard deviation over the images of each image's mean RGB, averaged over the three channels."""
    means = to_unit_rgb(images).mean(axis=(1, 2))  # (N, 3)
    return float(means.std(axis=0).mean())


def fidelity_to_base(images: Images, base_images: Images) -> dict[str, float]:
    """The three image figures of a fine-tune against its base, from the same seeds."""
    model, base = to_unit_rgb(images), to_unit_rgb(base_images)
    return {
        "ssim_to_base": ssim_to_base(model, base),
        "diversity_vs_base": _ratio(diversity(model), diversity(base)),
        "colour_spread_vs_base": _ratio(colour_spread(model), colour_spread(base)),
    }


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0 else float("nan")
