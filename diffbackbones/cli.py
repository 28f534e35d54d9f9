"""What the command-line tools share: how ``--weights``/``--activations`` map to backbone arguments, and
how an image file becomes the backbone's input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .zoo import ModelSpec

__all__ = ['IMAGE_SUFFIXES', 'pretrained_option', 'activations_option', 'read_image']

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


def pretrained_option(spec: ModelSpec, weights: str | None) -> bool | str:
    """``--weights``: omitted -> the zoo's weights (random for test models), ``'random'``, or a local
    diffusers folder / hub id."""
    if weights is None:
        return spec.hub_id is not None or spec.packaged is not None
    return False if weights == 'random' else weights


def activations_option(text: str) -> str | list[str]:
    """``--activations``: a preset name (or preset file), or comma-separated layer ids."""
    return text.split(',') if ',' in text else text


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) contiguous in [-1, 1]; an unreadable file stops the tool with its name."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert('RGB')).copy()
    except Exception as e:  # PIL's errors name no file when they come from deep inside
        raise SystemExit(f'cannot read image {path}: {e}') from None
    # contiguous: the backbone's output differs in the last bits between memory formats of one input
    return (torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1).contiguous()
