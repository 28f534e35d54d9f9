"""The control stage: an optional ControlNet whose residuals join the denoiser call.

``control=dict(model=<hub id or folder>, image='canny', scale=1.0)`` in a backbone's options (or
``control='<hub id>'``). Without a model (the default) the stage is a pass-through: the denoiser call is
unchanged.

The ControlNet sees what the denoiser sees (the noisy latents of every noise member, the timesteps, the
text conditioning and SDXL's added conditions) plus the control image, and its residuals go into the
denoiser call as diffusers' ControlNet pipelines pass them (``down_block_additional_residuals``,
``mid_block_additional_residual``; ``conditioning_scale=scale``, ``guess_mode=False``, as the paper code).

A UNet adds those residuals to its skip connections after the down blocks and to the mid block's output,
so activations of the down blocks and the mid block never see them: when every captured activation lies
there, the ControlNet is not run at all (``ControlNet.consumed`` is False) and the features are the ones
without control. Otherwise it runs whole, before the denoiser (its mid residual needs all of it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffbackbones.models.families import family_of
from diffbackbones.models.loading import RANDOM_INIT_SEED, WeightsNotFoundError, offline_note

__all__ = ['ControlStage', 'NoControl', 'ControlNet', 'PREPROCESSORS', 'register_preprocessor', 'canny',
           'load_controlnet', 'consumes_residuals']

Preprocessor = Callable[[torch.Tensor], torch.Tensor]

# name -> preprocessor: (B, 3, H, W) RGB in [-1, 1] -> (B, C, H, W) control image in [0, 1]
PREPROCESSORS: dict[str, Preprocessor] = {}


def register_preprocessor(name: str):
    """Function decorator: make a preprocessor available as ``control=dict(image=name)``."""
    def add(fn: Preprocessor) -> Preprocessor:
        PREPROCESSORS[name] = fn
        return fn
    return add


@register_preprocessor('canny')
def canny(images: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """Canny edges of each image (OpenCV, the paper code's thresholds 100/200) as a 3-channel 0/1 batch.

    The image is taken to 8-bit RGB first, as the paper code's PIL input is; OpenCV's Canny on a colour
    image uses, per pixel, the channel of largest gradient. ``functools.partial(canny, low=50, high=150)``
    gives other thresholds.
    """
    try:
        import cv2
    except ImportError as e:
        raise ImportError("the 'canny' control preprocessor needs OpenCV: pip install opencv-python-headless") from e
    import numpy as np
    pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    edges = [cv2.Canny(np.ascontiguousarray(p.permute(1, 2, 0).numpy()), low, high) for p in pixels]
    edges = torch.from_numpy(np.stack(edges)).to(images.device, torch.float32) / 255
    return edges[:, None].expand(-1, 3, -1, -1).contiguous()


@dataclass(frozen=True)
class _Interface:
    """How a family's denoiser takes ControlNet residuals."""

    controlnet_class: str  # the diffusers class of its ControlNets
    # top-level denoiser modules that run before any residual is consumed: captures there never see them
    before_residuals: tuple[str, ...]


# denoiser family -> its ControlNet interface; families not listed have none wired yet
INTERFACES: dict[str, _Interface] = {
    'unet': _Interface('ControlNetModel', ('conv_in', 'time_proj', 'time_embedding', 'class_embedding',
                                           'add_time_proj', 'add_embedding', 'down_blocks', 'mid_block')),
}
# the UNet mid blocks diffusers' ControlNetModel can mirror
_CONTROLNET_MID_BLOCKS = ('UNetMidBlock2DCrossAttn', 'UNetMidBlock2D')
# families whose ControlNets exist in diffusers with another interface (for the error message)
_NOT_WIRED = {'sd3': 'SD3ControlNetModel', 'flux': 'FluxControlNetModel', 'hunyuan': 'HunyuanDiT2DControlNetModel'}


def consumes_residuals(points: Sequence[Any], interface: _Interface = INTERFACES['unet']) -> bool:
    """Whether any of the captured ``points`` (``ActivationPoint``) is computed after the denoiser
    consumes a ControlNet residual; when none is, the ControlNet need not run."""
    return any(p.module.split('.')[0] not in interface.before_residuals for p in points)


class NoControl(nn.Module):
    """The denoiser's keyword arguments, unchanged (no ControlNet)."""

    def forward(self, kwargs: dict, images: torch.Tensor | None) -> dict:
        return kwargs

    def follow(self, capture: Any) -> None:
        """Nothing to re-decide without a ControlNet (see ``ControlNet.follow``)."""


class ControlNet(nn.Module):
    """A frozen ControlNet that adds its residuals to a denoiser call's keyword arguments.

    Args:
        controlnet: The diffusers ``ControlNetModel`` (kept frozen and in eval mode).
        preprocess: The RGB batch (B, 3, H, W) in [-1, 1] -> the control batch (B, C, H', W') in [0, 1].
        scale: diffusers' ``conditioning_scale``.
        capture: The backbone's ``ActivationCapture``: whether a captured activation consumes a residual
            decides ``consumed``; False skips the ControlNet (the call is returned unchanged).
        interface: How the denoiser family takes the residuals (``INTERFACES``).
    """

    def __init__(self, controlnet: nn.Module, preprocess: Preprocessor, scale: float, capture: Any,
                 interface: _Interface = INTERFACES['unet']):
        super().__init__()
        self.controlnet = controlnet.eval().requires_grad_(False)
        self.preprocess, self.scale, self.interface = preprocess, float(scale), interface
        self.follow(capture)

    def follow(self, capture: Any) -> None:
        """Decide again whether the ControlNet runs, for a new set of captured activations (the backbone's
        capture after ``select_levels``)."""
        self.consumed = consumes_residuals(capture.points, self.interface)

    def train(self, mode: bool = True) -> 'ControlNet':
        super().train(mode)
        self.controlnet.eval()  # frozen means eval, whatever the caller's mode
        return self

    def control_image(self, images: torch.Tensor) -> torch.Tensor:
        """The control batch as diffusers' pipeline hands it to the ControlNet: [0, 1], at the pixel size of
        the latents x the VAE factor (the working-size, padded ``images``), in the ControlNet's dtype."""
        control = self.preprocess(images)
        if not (isinstance(control, torch.Tensor) and control.ndim == 4 and control.shape[0] == images.shape[0]):
            raise ValueError(f'a control preprocessor must return a (B, C, H, W) tensor for the (B, 3, H, W) input '
                             f'{tuple(images.shape)}; got {getattr(control, "shape", type(control).__name__)}')
        if control.shape[-2:] != images.shape[-2:]:  # resized as the pipeline resizes a tensor (nearest)
            control = F.interpolate(control.float(), size=images.shape[-2:])
        return control.to(images.device, self.controlnet.dtype)

    def forward(self, kwargs: dict, images: torch.Tensor | None) -> dict:
        if not self.consumed:
            return kwargs
        if images is None:
            raise ValueError('this backbone has a ControlNet (control=...): the denoiser call needs the input '
                             'images for its control image; pass them to extract(latents, image_hw, images)')
        sample = kwargs['sample']
        control = self.control_image(images)
        members, rest = divmod(sample.shape[0], control.shape[0])
        assert rest == 0, (sample.shape, control.shape)
        control = control.repeat(members, 1, 1, 1)  # member-major, as the denoiser's rows
        down, mid = self.controlnet(sample, kwargs['timestep'], encoder_hidden_states=kwargs['encoder_hidden_states'],
                                    controlnet_cond=control, conditioning_scale=self.scale, guess_mode=False,
                                    added_cond_kwargs=kwargs.get('added_cond_kwargs'), return_dict=False)
        return dict(kwargs, down_block_additional_residuals=down, mid_block_additional_residual=mid)

    def extra_repr(self) -> str:
        return f'scale={self.scale}, consumed={self.consumed}'


def _random_controlnet(denoiser: nn.Module) -> nn.Module:
    # The denoiser's ControlNet architecture (diffusers' from_unet) with seeded random weights, the
    # zero-initialised output convolutions included: residuals that are not zero, for tests.
    from diffusers import ControlNetModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        controlnet = ControlNetModel.from_unet(denoiser, load_weights_from_unet=False)
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out):
            conv.reset_parameters()
    return controlnet


def load_controlnet(model: str | os.PathLike | nn.Module, denoiser: nn.Module) -> nn.Module:
    """The ControlNet named by ``model``: a hub id, a local folder (``save_pretrained`` output, or a pipeline
    folder with ``controlnet/``), ``'random'``, or a ``ControlNetModel`` itself.

    Raises:
        WeightsNotFoundError: the weights are neither in the Hugging Face cache (offline) nor at the path.
    """
    from diffusers import ControlNetModel
    if isinstance(model, nn.Module):
        return model
    if model == 'random':
        return _random_controlnet(denoiser)
    source = os.fspath(model)
    subfolder = 'controlnet' if (Path(source) / 'controlnet' / 'config.json').is_file() else None
    try:
        return ControlNetModel.from_pretrained(source, subfolder=subfolder)
    except (OSError, ValueError) as e:  # hub/cache misses surface as OSError subclasses or ValueError
        raise WeightsNotFoundError(
            f'Could not load the ControlNet {source!r}{offline_note()}: {e}\n'
            f'Fix: download it once (`huggingface-cli download {source}`) into the Hugging Face cache, or pass '
            "control=dict(model='/path/to/folder') (a folder written by ControlNetModel.save_pretrained), or "
            "control=dict(model='random') for seeded random weights (tests).") from e


def _check_fits(controlnet: nn.Module, denoiser: nn.Module, source: Any) -> None:
    keys = ('block_out_channels', 'cross_attention_dim', 'in_channels', 'addition_embed_type')
    theirs = {k: controlnet.config.get(k) for k in keys}
    ours = {k: denoiser.config.get(k) for k in keys}
    if {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in theirs.items()} != \
            {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in ours.items()}:
        raise ValueError(f'the ControlNet {source!r} was made for another denoiser: it has {theirs}, the backbone\'s '
                         f'denoiser has {ours}. Use a ControlNet trained for this model (an SD1.5 ControlNet for '
                         'sd15, an SDXL one for sdxl).')


@dataclass
class ControlStage:
    """A ControlNet beside the denoiser.

    Args:
        model: Hub id or local diffusers folder of a ControlNet for this denoiser; ``'random'``: the
            denoiser's ControlNet architecture (``ControlNetModel.from_unet``) with seeded random weights,
            zero-convolutions included (tests, shapes; independent of the backbone's ``pretrained``, which
            does not apply to the ControlNet); a ``ControlNetModel`` object; None: no ControlNet.
        image: How the control image is made from the RGB input: a preprocessor name (``'canny'``; see
            ``PREPROCESSORS``) or a callable from the (B, 3, H, W) working-size batch in [-1, 1] to the
            control batch (B, C, H, W) in [0, 1] (resized to the input's size if it is not). None: ``'canny'``.
        scale: ControlNet conditioning scale (diffusers' ``controlnet_conditioning_scale``). None: 1.0.
    """

    model: Any = None
    image: str | Preprocessor | None = None
    scale: float | None = None

    def __post_init__(self):
        if not (self.model is None or isinstance(self.model, (str, os.PathLike, nn.Module))):
            raise ValueError("control model must be a hub id, a folder, 'random' or a ControlNetModel; "
                             f'got {self.model!r}')
        if self.model is None and (self.image is not None or self.scale is not None):
            # image= or scale= alone means a ControlNet was wanted: not building one would drop them silently
            given = ', '.join(f'{k}={v!r}' for k, v in (('image', self.image), ('scale', self.scale)) if v is not None)
            raise ValueError(f'control=dict({given}) names no ControlNet: add model=<hub id or folder of a '
                             "ControlNet for this denoiser> (or model='random' for seeded random weights)")
        if isinstance(self.image, str) and self.image not in PREPROCESSORS:
            raise ValueError(f'unknown control image preprocessor {self.image!r}; available: {sorted(PREPROCESSORS)} '
                             '(or pass a callable from the (B, 3, H, W) batch in [-1, 1] to the control batch)')
        if not (self.image is None or isinstance(self.image, str) or callable(self.image)):
            raise ValueError(f'control image must be a preprocessor name or a callable; got {self.image!r}')
        if self.scale is not None and (isinstance(self.scale, bool) or not isinstance(self.scale, (int, float))):
            raise ValueError(f'control scale must be a number; got {self.scale!r}')

    @property
    def trainable(self) -> bool:
        return False

    def build(self, spec, pretrained: bool | str, dtype: torch.dtype, denoiser: nn.Module,
              capture: Any) -> nn.Module:
        """The module that adds the ControlNet's residuals to a denoiser call's keyword arguments.

        ``capture`` (the backbone's ``ActivationCapture``) decides whether the ControlNet runs at all."""
        if self.model is None:
            return NoControl()
        family = family_of(denoiser)
        interface = INTERFACES.get(family.name)
        if interface is None:
            other = _NOT_WIRED.get(family.name)
            raise ValueError(
                f'ControlNet is supported for UNet denoisers (SD1.x, SD2.x, SDXL) only, not yet for {spec.name!r} '
                f'({type(denoiser).__name__}). '
                + (f"diffusers' {other} returns one residual per transformer block, which the transformer adds "
                   'inside its blocks (block_controlnet_hidden_states / controlnet_block_samples), not '
                   'down/mid residuals; that interface is not wired into the backbone yet. ' if other else
                   'diffusers has no ControlNet for this denoiser. ')
                + 'Use control=None with this model.')
        mid_block = denoiser.config.get('mid_block_type') or 'UNetMidBlock2DCrossAttn'
        if mid_block not in _CONTROLNET_MID_BLOCKS:  # DeepFloyd IF's SimpleCrossAttn UNet
            raise ValueError(f'ControlNet is not available for {spec.name!r}: its UNet has a {mid_block} mid block, '
                             "which diffusers' ControlNetModel cannot mirror (it builds "
                             f'{list(_CONTROLNET_MID_BLOCKS)}), and diffusers has no ControlNet for this model. '
                             'Use control=None with this model.')
        controlnet = load_controlnet(self.model, denoiser)
        if type(controlnet).__name__ != interface.controlnet_class:
            raise ValueError(f'control model must be a diffusers {interface.controlnet_class} for {spec.name!r}; '
                             f'got {type(controlnet).__name__}')
        name = type(self.model).__name__ if isinstance(self.model, nn.Module) else self.model
        _check_fits(controlnet, denoiser, name)
        if next(controlnet.parameters()).dtype != dtype:
            controlnet = nn.Module.to(controlnet, dtype)  # nn.Module.to: diffusers' own warns on every cast
        image = 'canny' if self.image is None else self.image
        preprocess = PREPROCESSORS[image] if isinstance(image, str) else image
        return ControlNet(controlnet, preprocess, 1.0 if self.scale is None else self.scale, capture, interface)
