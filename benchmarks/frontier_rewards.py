"""Named, optional rewards for the frontier: JPEG compressibility plus a term that keeps what a blur loses.

They are never the definition of compressibility (that is `training/rewards.py`'s `jpeg_compressibility`); a
frontier method that trains on one carries its name, so a table never passes it off as plain DDPO. Used as a
custom reward, `--reward frontier_rewards:jpeg_compressibility_keep_edges`, by `benchmarks/frontier.py` (which
runs from this folder, so the module is importable).
"""

from __future__ import annotations

import numpy as np
import torch

from ddpo_hub.training.fidelity import edge_sharpness
from ddpo_hub.training.jpeg import jpeg_sizes

EDGE_WEIGHT = 2.0
"""kB of reward per unit of edge sharpness. On the emoji base's samples the per-image JPEG size spreads by 0.07 kB
and the 90th-percentile Sobel magnitude by 0.06 (correlation 0.14), so at 2 a blur that cuts 13% of the bytes
(0.2 kB) while losing a quarter of the edges (0.08, twice: 0.16) gains almost nothing, and flattening fills inside
kept outlines gains the whole cut."""


def jpeg_compressibility_keep_edges(images: torch.Tensor) -> np.ndarray:
    """Minus the JPEG size in kB, plus `EDGE_WEIGHT` times each image's own edge sharpness (fidelity.py's
    definition: the 90th percentile of the Sobel magnitude of the grey picture, as users see it)."""
    kilobytes = np.asarray(jpeg_sizes(images), dtype=np.float64) / 1000.0
    edges = np.array([edge_sharpness(image[None]) for image in images])
    return -kilobytes + EDGE_WEIGHT * edges
