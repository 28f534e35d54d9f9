"""What the commands share: how ``--weights``/``--activations`` map to backbone arguments, and how an
image file becomes the backbone's input (stopping the command with the file's name when it cannot)."""
from __future__ import annotations

from pathlib import Path

import torch

from diffbackbones.utils import images
from diffbackbones.utils.images import IMAGE_SUFFIXES
from diffbackbones.models.zoo import ModelSpec, default_weights

__all__ = ['IMAGE_SUFFIXES', 'pretrained_option', 'activations_option', 'given_options', 'read_image']


def pretrained_option(spec: ModelSpec, weights: str | None) -> bool | str:
    """``--weights``: omitted -> the zoo's weights (random for test models), ``'random'``, or a local
    diffusers folder / hub id."""
    return False if weights == 'random' else default_weights(spec, weights)


def activations_option(text: str) -> str | list[str]:
    """``--activations``: a preset name (or preset file), or comma-separated layer ids."""
    return text.split(',') if ',' in text else text


def given_options(args, names=('t', 'image_size')) -> dict:
    """The backbone options among ``names`` that a command's flags set (None: left to the library's default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def read_image(path: Path) -> torch.Tensor:
    """``images.read_image`` for a command: an unreadable file stops it with the file's name."""
    try:
        return images.read_image(path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
