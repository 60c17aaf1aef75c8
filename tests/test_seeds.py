"""The seed purposes: their values are part of every run, so a resumed or repeated run samples what it did."""

from __future__ import annotations

import numpy as np
import torch

from ddpo_hub.training.seeds import Purpose, generator, seed_for


def test_purposes_keep_the_values_runs_were_made_with():
    assert {purpose.name: int(purpose) for purpose in Purpose} == {
        "NOISE": 0,
        "STEP_NOISE": 1,
        "SHUFFLE": 2,
        "GRID": 3,
        "FORWARD_NOISE": 100,
    }


def test_a_draw_depends_on_the_run_seed_purpose_and_position_alone():
    expected = int(np.random.SeedSequence([7, 0, 3, 1, 2]).generate_state(1)[0])
    assert seed_for(7, Purpose.NOISE, 3, 1, 2) == expected
    torch.manual_seed(123)  # global RNG state plays no part
    first = torch.randn(4, generator=generator(7, Purpose.NOISE, 3, 1, 2))
    torch.manual_seed(456)
    assert torch.equal(first, torch.randn(4, generator=generator(7, Purpose.NOISE, 3, 1, 2)))
    assert not torch.equal(first, torch.randn(4, generator=generator(7, Purpose.STEP_NOISE, 3, 1, 2)))
