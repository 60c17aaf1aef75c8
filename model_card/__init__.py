"""Model cards for DDPO runs: `template.md` filled by `render.py`, pictures by `figures.py`."""

from ddpo_hub.model_card.render import render_card, write_card

__all__ = ["render_card", "write_card"]
