"""Image files as the backbone's input: which files count as images, and how one is read."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ['IMAGE_SUFFIXES', 'read_image', 'image_files']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def read_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) contiguous in [-1, 1]; an unreadable file raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert('RGB')).copy()
    except Exception as e:  # PIL's errors name no file when they come from deep inside
        raise ValueError(f'cannot read image {path}: {e}') from None
    # contiguous: the backbone's output differs in the last bits between memory formats of one input
    return (torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1).contiguous()


def image_files(images: str | Path | Sequence[str | Path], limit: int | None = None) -> list[Path]:
    """The images of a folder (sorted, this level only) or a list of paths; at most ``limit``."""
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f'images: {folder} is not a folder')
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f'{folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    else:
        paths = [Path(p) for p in images]
        if not paths:
            raise ValueError('images: the list of image paths is empty')
    return paths[:limit]
