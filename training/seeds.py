"""Which random stream each draw of a run comes from, and the seeds that name them.

Every draw is seeded by the run seed, its purpose and its position (epoch, process, batch...), never by global
RNG state: an interrupted-and-resumed run then samples exactly what an uninterrupted one samples, and one
purpose's draws never shift another's.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Purpose(IntEnum):
    """A stream's tag, the second part of its seed. The values are part of every run: changing one changes runs."""

    NOISE = 0
    """A rollout batch's initial noise x_T."""
    STEP_NOISE = 1
    """A rollout batch's per-step noise."""
    SHUFFLE = 2
    """An inner epoch's minibatch order and each sample's trained timesteps."""
    GRID = 3
    """The fixed-seed set (sample grids and fidelity metrics): its initial noise, then its per-step noise."""
    FORWARD_NOISE = 100
    """NFT: the forward-process noise of one training step."""


def seed_for(*parts: int) -> int:
    """A well-mixed 32-bit seed for a tuple of integers (run seed, purpose, position...)."""
    return int(np.random.SeedSequence([int(part) for part in parts]).generate_state(1)[0])


def generator(run_seed: int, purpose: Purpose, *position: int) -> torch.Generator:
    """A CPU generator for one draw: `purpose` at `position` of the run seeded `run_seed`."""
    return torch.Generator().manual_seed(seed_for(run_seed, purpose, *position))
