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
* `edge_sharpness_vs_base`: the 90th percentile of the Sobel gradient magnitude (scikit-image) of the grey
  images, fine-tuned over base: a blur lowers it; flattening fills while keeping outlines does not.

SSIM rewards anything pixel-aligned with the base, which is exactly what a blur is. Where the base ships a
subject judge (`training/judge.py`), three more figures say whether the subject survived:

* `subject_rate`: share of the fine-tuned images the judge calls a face, person or animal (and
  `base_subject_rate`, the base's own share, beside it).
* `subject_kept`: share of seeds whose fine-tuned image gets the same subject class as the base's image of the
  same seed, among the seeds whose base image has a subject.
* `kid_to_base`: kernel inception distance (torchmetrics, all images in one subset) between the fine-tuned and
  the base images in the judge's penultimate features: 0 is the same distribution.

For a base without a judge these three keys are absent, not zero.

Images are compared as users see them: the uint8 pictures `DDPMPipeline` returns, scaled to [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from scipy.spatial.distance import pdist
from skimage.color import rgb2gray
from skimage.filters import sobel
from skimage.metrics import structural_similarity

from .jpeg import to_pil

if TYPE_CHECKING:
    from .judge import SubjectJudge

DIVERSITY_SIZE = 8
"""Images are box-downscaled to this many pixels a side before their distances are taken."""
SHARPNESS_PERCENTILE = 90
"""Edge crispness is this percentile of the Sobel magnitude: the strongest edges, not the flat fills."""

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


def edge_sharpness(images: Images) -> float:
    """The `SHARPNESS_PERCENTILE`th percentile of the Sobel gradient magnitude over all pixels of the grey images."""
    array = to_unit_rgb(images)
    return float(np.percentile(np.stack([sobel(rgb2gray(image)) for image in array]), SHARPNESS_PERCENTILE))


def subject_figures(images: Images, base_images: Images, judge: SubjectJudge) -> dict[str, float]:
    """`subject_rate`, `base_subject_rate`, `subject_kept` and (for two images or more) `kid_to_base` of
    same-seed image sets."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from .judge import CLASSES, NO_SUBJECT

    model = torch.from_numpy(to_unit_rgb(images)).permute(0, 3, 1, 2).float()
    base = torch.from_numpy(to_unit_rgb(base_images)).permute(0, 3, 1, 2).float()
    if model.shape != base.shape:
        raise ValueError(f"Cannot pair images of shape {tuple(model.shape)} with base images {tuple(base.shape)}.")
    none = CLASSES.index(NO_SUBJECT)
    with torch.inference_mode():
        model_classes, base_classes = judge.classify(model), judge.classify(base)
        base_has_subject = base_classes != none
        kept = (model_classes == base_classes)[base_has_subject]
        figures = {
            "subject_rate": float((model_classes != none).float().mean()),
            "base_subject_rate": float(base_has_subject.float().mean()),
            "subject_kept": float(kept.float().mean()) if len(kept) else float("nan"),
        }
        if len(model) < 2:  # KID's unbiased estimate compares pairs within each set
            return figures
        with warnings.catch_warnings():  # it warns that it keeps every feature: a few hundred here
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=_Features(judge), subsets=1, subset_size=len(model))
        kid.update(base, real=True)
        kid.update(model, real=False)
        with torch.random.fork_rng():  # its subset draw uses the global generator; one whole subset needs none
            kid_mean, _ = kid.compute()
    return {**figures, "kid_to_base": float(kid_mean)}


class _Features(torch.nn.Module):
    """The judge's penultimate layer as the feature extractor torchmetrics' KID takes."""

    def __init__(self, judge: SubjectJudge):
        super().__init__()
        self.judge = judge

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.judge.features(images)


def fidelity_to_base(images: Images, base_images: Images, judge: SubjectJudge | None = None) -> dict[str, float]:
    """The image figures of a fine-tune against its base, from the same seeds; the subject figures with a judge."""
    model, base = to_unit_rgb(images), to_unit_rgb(base_images)
    figures = {
        "ssim_to_base": ssim_to_base(model, base),
        "diversity_vs_base": _ratio(diversity(model), diversity(base)),
        "colour_spread_vs_base": _ratio(colour_spread(model), colour_spread(base)),
        "edge_sharpness_vs_base": _ratio(edge_sharpness(model), edge_sharpness(base)),
    }
    if judge is not None:
        figures.update(subject_figures(model, base, judge))
    return figures


def describe(figures: dict[str, float]) -> str:
    """The one sentence every report uses: `same-seed SSIM to base 0.71, diversity 0.95, colour spread 0.98, edges 0.90,
    subject kept 0.94 (rate 0.91 vs 0.95), KID 0.012` (the figures present; empty when there are none)."""
    parts = [
        f"{label} {figures[key]:.2f}"
        for key, label in (
            ("ssim_to_base", "same-seed SSIM to base"),
            ("diversity_vs_base", "diversity"),
            ("colour_spread_vs_base", "colour spread"),
            ("edge_sharpness_vs_base", "edges"),
        )
        if key in figures
    ]
    if "subject_kept" in figures:
        rate = f" (rate {figures['subject_rate']:.2f} vs {figures['base_subject_rate']:.2f})"
        parts.append(f"subject kept {figures['subject_kept']:.2f}" + (rate if "base_subject_rate" in figures else ""))
    if "kid_to_base" in figures:
        parts.append(f"KID {figures['kid_to_base']:.3f}")
    return ", ".join(parts)


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0 else float("nan")
