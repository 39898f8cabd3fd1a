"""Argument checks shared by constructors in every layer, so a bad value fails where it is
given, with the parameter's name in the message."""

from __future__ import annotations


def positive(name: str, value: float) -> float:
    """``value`` if it is > 0; else a ValueError naming the parameter ``name``."""
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
