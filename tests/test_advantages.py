"""Advantages and the running-statistics tracker against numpy computed from the reward history."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpo_hub.training.advantages import RewardStatTracker, compute_advantages


def _rewards(seed: int, size: int = 8, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shift, scale=1.5, size=size)


def _standardise(values: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(values - mean) / std over `history`: the population std, as DDPO and ddpo-pytorch use."""
    mean = sum(history.tolist()) / len(history)
    std = (sum((value - mean) ** 2 for value in history.tolist()) / len(history)) ** 0.5
    return (values - mean) / std


def test_without_a_tracker_each_batch_is_normalised_by_its_own_statistics():
    rewards = _rewards(0, size=16, shift=-3.0)
    advantages = compute_advantages(rewards, adv_clip_max=100.0)
    np.testing.assert_allclose(advantages, _standardise(rewards, rewards), rtol=1e-7)
    assert advantages.mean() == pytest.approx(0.0, abs=1e-12) and advantages.std() == pytest.approx(1.0)


def test_advantages_are_clipped_to_adv_clip_max():
    rewards = np.array([0.0, 0.1, -0.1, 0.05, 10.0, -8.0, 0.0, 0.02])
    expected = np.clip(_standardise(rewards, rewards), -1.2, 1.2)
    advantages = compute_advantages(rewards, adv_clip_max=1.2)
    np.testing.assert_allclose(advantages, expected, rtol=1e-7)
    assert advantages.max() == 1.2 and advantages.min() == -1.2, "both outliers hit the bound"
    assert np.sum(np.abs(advantages) == 1.2) == 2, "the rest are untouched"


def test_tracker_uses_the_batch_below_min_count_then_the_last_buffer_size_rewards():
    tracker = RewardStatTracker(buffer_size=20, min_count=16)
    batches = [_rewards(seed, shift=seed) for seed in range(4)]  # a drifting reward: the statistics differ

    # 8 tracked rewards < min_count: the batch's own statistics.
    first = compute_advantages(batches[0], adv_clip_max=100.0, tracker=tracker)
    np.testing.assert_allclose(first, _standardise(batches[0], batches[0]), rtol=1e-7)

    # 16 tracked: both batches' statistics, which differ from the second batch's own.
    second = compute_advantages(batches[1], adv_clip_max=100.0, tracker=tracker)
    history = np.concatenate(batches[:2])
    np.testing.assert_allclose(second, _standardise(batches[1], history), rtol=1e-7)
    assert not np.allclose(second, _standardise(batches[1], batches[1]))

    # 24 seen, 20 kept: the oldest 4 rewards drop out of the statistics.
    third = compute_advantages(batches[2], adv_clip_max=100.0, tracker=tracker)
    history = np.concatenate(batches[:3])[-20:]
    np.testing.assert_allclose(third, _standardise(batches[2], history), rtol=1e-7)
    assert not np.allclose(third, _standardise(batches[2], np.concatenate(batches[:3])))
    assert list(tracker.buffer) == history.tolist()

    # The clip applies to tracked advantages too.
    fourth = compute_advantages(batches[3], adv_clip_max=0.5, tracker=tracker)
    history = np.concatenate(batches[:4])[-20:]
    np.testing.assert_allclose(fourth, np.clip(_standardise(batches[3], history), -0.5, 0.5), rtol=1e-7)


def test_tracker_state_round_trip_continues_identically():
    """As a resumed run restores it from an accelerate checkpoint (here through JSON: plain floats only)."""
    tracker = RewardStatTracker(buffer_size=12, min_count=6)
    for seed in range(2):
        tracker.update(_rewards(seed, shift=seed))
    restored = RewardStatTracker(buffer_size=12, min_count=6)
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert list(restored.buffer) == list(tracker.buffer)
    for seed in range(2, 5):
        batch = _rewards(seed, shift=seed)
        np.testing.assert_array_equal(restored.update(batch), tracker.update(batch))
        assert len(restored.buffer) == 12, "the restored buffer keeps its size limit"
    assert list(restored.buffer) == list(tracker.buffer)
