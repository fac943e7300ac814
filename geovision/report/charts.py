"""Small inline SVG charts for the HTML report (no plotting library, no external resource)."""

from __future__ import annotations

from html import escape

import numpy as np

__all__ = ["histogram_bins", "histogram_svg"]


def histogram_bins(values: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of ``values``: ``bins`` equal bins over [0, 1] when all values lie there.

    Args:
        values: ``(N,)`` finite numbers (confidences).
        bins: number of bins.

    Returns:
        ``(counts (bins,), edges (bins + 1,))``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size and (values.min() < 0 or values.max() > 1):
        low, high = float(values.min()), float(values.max())
        if high <= low:
            low, high = low - 0.5, high + 0.5
    else:
        low, high = 0.0, 1.0
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return counts, edges


def histogram_svg(values: np.ndarray, *, label: str, bins: int = 20, color: str = "#3b6ea5",
                  width: int = 520, height: int = 220) -> str:
    """An inline ``<svg>`` histogram of ``values`` with axes, ticks and a title line.

    Args:
        values: ``(N,)`` finite numbers.
        label: the quantity, e.g. ``mean_probability``.
        bins: number of bins.
        color: bar colour ``#rrggbb``.
        width: SVG width in CSS pixels.
        height: SVG height in CSS pixels.

    Returns:
        The SVG markup (no ``xmlns`` needed inside HTML).
    """
    counts, edges = histogram_bins(values, bins)
    left, right, top, bottom = 48, 12, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(int(counts.max()) if counts.size else 0, 1)
    bar_w = plot_w / len(counts)
    parts = [
        (f'<svg class="gv-histogram" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
         f'role="img" aria-label="histogram of {escape(label)}">'),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#555"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#555"/>',
    ]
    for i, count in enumerate(counts):
        h = plot_h * int(count) / peak
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{edges[i]:.3g}–{edges[i + 1]:.3g}: {int(count)}</title></rect>'
        )
    for k in range(5):
        frac = k / 4
        x = left + frac * plot_w
        value = edges[0] + frac * (edges[-1] - edges[0])
        parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#555"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{value:.3g}</text>')
    for k in range(3):
        frac = k / 2
        y = top + plot_h - frac * plot_h
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{round(frac * peak)}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
