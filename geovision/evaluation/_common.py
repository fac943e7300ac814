"""Tiny helpers shared by the evaluation modules: ratios that are ``None``, never ``NaN``, when undefined."""

from __future__ import annotations


def _ratio(num: float, den: float) -> float | None:
    """``num / den`` as a Python float, ``None`` when ``den`` is 0."""
    return float(num) / float(den) if den else None


def _pct(num: float, den: float) -> float | None:
    """``100 * num / den``, ``None`` when ``den`` is 0."""
    return 100.0 * float(num) / float(den) if den else None
