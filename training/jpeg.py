"""The one place that turns model output into JPEG bytes.

The reward the model is trained on, the evaluation numbers on the model card and the byte sizes
shown in the Space all come from these functions, so a user sees exactly what was optimised.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

JPEG_QUALITY = 95
"""Quality used by ddpo-pytorch's compressibility reward."""

JPEG_SUBSAMPLING = "4:2:0"
"""Chroma subsampling, set explicitly (it is also Pillow's default at this quality)."""


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Convert model-space images in [-1, 1], shape (N, C, H, W), exactly as `DDPMPipeline` does."""
    array = (images.detach().float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return DiffusionPipeline.numpy_to_pil(array)


def encode_jpeg(image: Image.Image | np.ndarray) -> bytes:
    """Encode one RGB image the way the reward measures it."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buffer.getvalue()


def encode_jpegs(images: Sequence[Image.Image], max_workers: int = 8) -> list[bytes]:
    """Encode many images in a thread pool (Pillow releases the GIL while encoding)."""
    if len(images) <= 1:
        return [encode_jpeg(image) for image in images]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(images))) as pool:
        return list(pool.map(encode_jpeg, images))


def jpeg_sizes(images: torch.Tensor | Sequence[Image.Image], max_workers: int = 8) -> list[int]:
    """JPEG byte count of each image; accepts model-space tensors or PIL images."""
    if isinstance(images, torch.Tensor):
        images = to_pil(images)
    return [len(data) for data in encode_jpegs(images, max_workers=max_workers)]
