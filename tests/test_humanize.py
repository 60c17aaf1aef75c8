"""The one duration formatter shared by ddpo-eval, the card and the Space."""

from __future__ import annotations

import pytest

from ddpo_hub.training.humanize import duration_text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "under 1 s"),
        (1.0, "1 s"),
        (44.6, "45 s"),
        (59.4, "59 s"),
        (59.6, "1 min 00 s"),
        (759, "12 min 39 s"),
        (3723.5, "1 h 02 min 04 s"),
    ],
)
def test_duration_text_reads_like_a_clock(seconds, text):
    assert duration_text(seconds) == text
