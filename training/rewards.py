"""Reward functions: a batch of model-space images in [-1, 1] in, one float per image out.

Like ddpo-pytorch's `rewards.py`, each built-in reward is a small factory returning the batch function.
JPEG rewards also return the byte counts, so the trainer logs sizes without encoding twice. The trainer runs
rewards in a thread while the next batch samples (`reward_in_background`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from concurrent.futures import Executor, Future

import numpy as np
import torch

from .jpeg import jpeg_sizes

RewardOutput = tuple[np.ndarray, dict[str, np.ndarray]]
RewardFn = Callable[[torch.Tensor], RewardOutput]


def jpeg_incompressibility(max_workers: int = 8) -> RewardFn:
    """The JPEG size in kB (bytes / 1000): busier, harder-to-compress images score higher."""

    def reward(images: torch.Tensor) -> RewardOutput:
        sizes = np.asarray(jpeg_sizes(images, max_workers=max_workers), dtype=np.int64)
        return sizes / 1000.0, {"jpeg_bytes": sizes}

    return reward


def jpeg_compressibility(max_workers: int = 8) -> RewardFn:
    """Minus `jpeg_incompressibility`: smaller files score higher (DDPO's compressibility task)."""
    incompressibility = jpeg_incompressibility(max_workers)

    def reward(images: torch.Tensor) -> RewardOutput:
        kilobytes, info = incompressibility(images)
        return -kilobytes, info

    return reward


REWARDS: dict[str, Callable[[], RewardFn]] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
}


def load_reward(name: str) -> RewardFn:
    """A built-in reward by name, or `module:function` naming `function(images) -> floats`."""
    if name in REWARDS:
        return REWARDS[name]()
    if ":" not in name:
        raise ValueError(
            f"Unknown reward {name!r}: use one of {', '.join(REWARDS)} or 'module:function' for a custom reward."
        )
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot load custom reward {name!r}: {error}.") from error
    if not callable(function):
        raise ValueError(f"Custom reward {name!r} is not callable.")

    def reward(images: torch.Tensor) -> RewardOutput:
        try:
            values = function(images)
        except Exception as error:  # a user's function: one clear line instead of a thread-pool traceback
            raise ValueError(
                f"Custom reward {name!r} raised {type(error).__name__} on a batch of {images.shape[0]} images: {error}"
            ) from error
        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().numpy()
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape[0] != images.shape[0]:
            raise ValueError(f"Reward {name!r} returned {values.shape[0]} values for {images.shape[0]} images.")
        return values, {}

    return reward


def reward_in_background(reward_fn: RewardFn, images: torch.Tensor, pool: Executor | None) -> Future[RewardOutput]:
    """Reward a batch in `pool`, so the next batch samples meanwhile; at once without a pool.

    The images are copied to the host without waiting for the GPU: the reward thread waits for that copy,
    the sampling thread goes on queueing the next batch's kernels.
    """
    host, copied = _copy_to_host(images)

    def reward() -> RewardOutput:
        if copied is not None:
            copied.synchronize()
        return reward_fn(host)

    if pool is not None:
        return pool.submit(reward)
    done: Future[RewardOutput] = Future()
    done.set_result(reward())
    return done


def _copy_to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying a GPU tensor to pinned host memory; returns the copy and the event that marks it done.

    `.cpu()` would make the host wait for the GPU to finish the batch before queueing the next one's kernels.
    """
    if tensor.device.type != "cuda":
        return tensor.cpu(), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return host, copied
