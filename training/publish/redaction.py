"""Keeping the Hub token out of every message, log line and file we write."""

from __future__ import annotations

import re

from huggingface_hub import get_token

_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{16,}\b")
_REDACTED = "***"


def scrub_token(text: str, token: str | None = None) -> str:
    """`text` with the given token, HF_TOKEN or the stored login, and anything token-shaped masked."""
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, _REDACTED)
    return _TOKEN_LIKE.sub(_REDACTED, text)
