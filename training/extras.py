"""Optional features live behind pip extras; this says which extra a missing one needs."""

from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """A feature was asked for whose optional dependency is not installed."""


def require_extra(module: str, *, extra: str, feature: str) -> None:
    """Raise `MissingExtraError` naming the extra to install when `module` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"{feature} needs the '{module}' package, which is not installed: pip install 'ddpo-hub[{extra}]'."
        )
