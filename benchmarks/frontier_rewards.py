"""Named, optional rewards for the frontier: JPEG compressibility plus a term that keeps what a blur loses.

They are never the definition of compressibility (that is `training/rewards.py`'s `jpeg_compressibility`); a
frontier method that trains on one carries its name, so a table never passes it off as plain DDPO. Used as a custom
reward (`--reward frontier_rewards:jpeg_compressibility_keep_edges`, `...keep_subject`) by `benchmarks/frontier.py`
(which runs from this folder, so the module is importable).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ddpo_hub.training.fidelity import edge_sharpness, to_unit_rgb
from ddpo_hub.training.jpeg import jpeg_sizes
from ddpo_hub.training.judge import CLASSES, NO_SUBJECT, SubjectJudge, load_judge
from ddpo_hub.training.pipelines import TINY_BASE_MODEL, resolve_model_path

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


SUBJECT_WEIGHT = 0.1
"""kB of reward per nat of the judge's belief that there is a subject. A confident subject scores about -0.01, a
borderline one -1 to -2: losing the subject costs about as much as the per-image JPEG spread (0.07 kB) to twice it."""


@functools.cache
def _bundled_judge() -> SubjectJudge:
    judge = load_judge(resolve_model_path(TINY_BASE_MODEL))
    if judge is None:
        raise ValueError(f"{TINY_BASE_MODEL} ships no subject judge.")
    return judge


def jpeg_compressibility_keep_subject(images: torch.Tensor) -> np.ndarray:
    """Minus the JPEG size in kB, plus `SUBJECT_WEIGHT` times the log-probability that the bundled base's judge
    sees a face, person or animal (of any class: a reward sees no base image to match) in the picture users see."""
    kilobytes = np.asarray(jpeg_sizes(images), dtype=np.float64) / 1000.0
    pictures = torch.from_numpy(to_unit_rgb(images)).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        p_none = _bundled_judge()(pictures).softmax(dim=-1)[:, CLASSES.index(NO_SUBJECT)]
    return -kilobytes + SUBJECT_WEIGHT * torch.log1p(-p_none).clamp(min=-10.0).double().numpy()
