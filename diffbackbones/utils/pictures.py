"""Pictures side by side: RGB panels joined with white gaps, optionally under a row of titles.

    row = side_by_side([image, truth, prediction], titles=['input', 'ground truth', 'prediction'], scale=2)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ['side_by_side', 'stack_rows', 'colorize_labels']

GAP = 4
_TITLE_HEIGHT = 22


def colorize_labels(labels, palette: Sequence[Sequence[int]], ignore: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in ``palette``; ``ignore`` (and ids past the palette) black."""
    labels = np.asarray(labels)
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = np.asarray(palette, np.uint8)
    rgb = lut[labels.astype(np.uint8)]
    rgb[labels == ignore] = 0
    return rgb


def _upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    # nearest: label maps keep their hard edges, and every pixel of the input stays visible as a block
    return rgb.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else rgb


def side_by_side(panels: Sequence[np.ndarray], titles: Sequence[str] | None = None, scale: int = 1,
                 gap: int = GAP) -> np.ndarray:
    """(H, W, 3) uint8 panels of one height, left to right with white gaps, each ``scale`` times larger;
    ``titles`` adds a white strip with each panel's name above it."""
    panels = [_upscale(np.asarray(p, np.uint8)[..., :3], scale) for p in panels]
    if not panels or len({p.shape[0] for p in panels}) != 1:
        raise ValueError(f'side_by_side needs panels of one height; got {[p.shape for p in panels]}')
    height = panels[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    row = np.concatenate([part for p in panels for part in (spacer, p)][1:], axis=1)
    if not titles:
        return row
    strip = Image.new('RGB', (row.shape[1], _TITLE_HEIGHT), 'white')
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default(size=15)
    x = 0
    for panel, title in zip(panels, titles):
        draw.text((x + panel.shape[1] // 2, _TITLE_HEIGHT // 2), title, fill='black', font=font, anchor='mm')
        x += panel.shape[1] + gap
    return np.concatenate([np.asarray(strip), row], axis=0)


def stack_rows(rows: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Rows of pictures top to bottom, narrower ones padded white on the right, white gaps between."""
    if not rows:
        raise ValueError('stack_rows needs at least one row')
    width = max(r.shape[1] for r in rows)
    padded = [np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)], axis=1)
              if r.shape[1] < width else r for r in rows]
    spacer = np.full((gap, width, 3), 255, np.uint8)
    return np.concatenate([part for r in padded for part in (spacer, r)][1:], axis=0)
