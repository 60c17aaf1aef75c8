"""Model cards for DDPO runs: `template.md` filled by `render.py`, pictures by `figures.py`."""

from .render import render_card, write_card

__all__ = ["render_card", "write_card"]
