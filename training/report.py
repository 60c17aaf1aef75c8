"""What a run reports: each epoch's row of metrics.jsonl (and TensorBoard) and its printed line, the hparams."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import TrainConfig
from .fidelity import describe
from .phases import EpochRewards, UpdateStats


def metrics_row(
    epoch: int,
    global_step: int,
    rewards: EpochRewards,
    update: UpdateStats,
    fidelity: dict[str, float],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The gathered rewards and JPEG sizes, the update's stats, the fixed seeds' fidelity, then seconds (to the ms)."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "reward_mean": float(rewards.rewards.mean()),
        "reward_std": float(rewards.rewards.std()),
        "jpeg_kb_mean": float(rewards.jpeg_bytes.mean() / 1000),
        "jpeg_bytes_mean": float(rewards.jpeg_bytes.mean()),
        **update.stats,
        **fidelity,
        **{name: round(value, 3) for name, value in seconds.items()},
    }


def progress_line(row: dict[str, Any], epochs: int, step_stats: Sequence[str]) -> str:
    """Reward, JPEG size, the update's stats, the fixed seeds' cost against the base if measured, and the time."""
    costs = (
        f", fixed seeds {row['jpeg_change_vs_base']:+.1%} JPEG at {describe(row)}"
        + (f", KL to base {row['kl_to_base']:.2e}" if "kl_to_base" in row else "")
        if "jpeg_change_vs_base" in row
        else ""
    )
    stats = ", ".join(f"{name} {row[name]:.3g}" for name in step_stats)
    return (
        f"epoch {row['epoch']}/{epochs}: reward {row['reward_mean']:.4f} ± {row['reward_std']:.4f}, "
        f"JPEG {row['jpeg_kb_mean']:.3f} kB, {stats}{costs}, "
        f"{row['seconds']:.1f}s (sample {row['seconds_sampling']:.1f}, train {row['seconds_training']:.1f})"
    )


def hparams(config: TrainConfig) -> dict[str, Any]:
    """The config as TensorBoard's hparams, which accept scalars and strings only."""
    values = config.to_dict()
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}
