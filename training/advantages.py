"""From rewards to clipped advantages: per-epoch normalisation or a running-statistics tracker.

Unconditional models have no prompts, so ddpo-pytorch's per-prompt tracker reduces to a single stream.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def normalize(rewards: np.ndarray, mean: float, std: float, eps: float = 1e-8) -> np.ndarray:
    return (rewards - mean) / (std + eps)


class RewardStatTracker:
    """Normalises rewards with the statistics of the last `buffer_size` rewards seen.

    Smooths the advantage scale across epochs; until `min_count` rewards are tracked, each batch is
    normalised by its own statistics. Saved in accelerate checkpoints, so resumed runs continue exactly.
    """

    def __init__(self, buffer_size: int = 256, min_count: int = 32):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffer: deque[float] = deque(maxlen=buffer_size)

    def update(self, rewards: np.ndarray) -> np.ndarray:
        """Add this epoch's rewards (gathered from all processes) and return their advantages."""
        self.buffer.extend(float(reward) for reward in rewards)
        history = np.asarray(self.buffer) if len(self.buffer) >= self.min_count else rewards
        return normalize(rewards, float(np.mean(history)), float(np.std(history)))

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = deque(state["buffer"], maxlen=self.buffer_size)


def compute_advantages(
    rewards: np.ndarray, adv_clip_max: float, tracker: RewardStatTracker | None = None
) -> np.ndarray:
    """Advantages of one epoch's rewards, normalised over the whole (gathered) batch and clipped."""
    advantages = tracker.update(rewards) if tracker else normalize(rewards, rewards.mean(), rewards.std())
    return np.clip(advantages, -adv_clip_max, adv_clip_max)
