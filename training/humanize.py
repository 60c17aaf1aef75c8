"""Numbers in words for people: the one way every report (ddpo-eval, the card, the Space) writes a duration."""

from __future__ import annotations


def duration_text(seconds: float) -> str:
    """`under 1 s`, `45 s`, `12 min 39 s` or `1 h 02 min 04 s`: whole seconds, as a person reads a clock."""
    if seconds < 1:
        return "under 1 s"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
