"""Capture named activations from a denoiser with forward hooks, and stop its forward early.

    with ActivationCapture(unet, ['up-level1-repeat0-vit-block0-cross-q']) as cap:
        unet(latents, t, encoder_hidden_states=text)
    cap.activations['up-level1-repeat0-vit-block0-cross-q']   # (B, C, h, w)

Everything is composition: hooks on ``to_q``/``to_k``/``to_v``, ``conv2``, blocks and resamplers, and
an attention processor swapped in only on the attention modules whose probability maps were asked
for (all others keep the fused kernel). Leaving the context removes every hook and restores every
processor, so the model is left as found; nothing is patched globally.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
from diffusers.models.attention_processor import Attention

from .catalog import ActivationPoint, activation_points, resolve_names

__all__ = ['ActivationCapture', 'StopForward']


class StopForward(Exception):
    """Raised from a hook once every requested activation is captured; `ActivationCapture` swallows it."""


def _first_tensor(output) -> torch.Tensor:
    # Transformer2DModel returns a dataclass / tuple whose first field is the sample.
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, 'sample'):
        return output.sample
    return output[0]


def tokens_to_grid(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major tokens -> (B, C, h, w), using the known grid (never sqrt(N))."""
    b, n, c = tokens.shape
    if n != hw[0] * hw[1]:
        raise RuntimeError(f'token count {n} does not match the grid {hw}')
    return tokens.transpose(1, 2).reshape(b, c, hw[0], hw[1])


class _MapAttnProcessor:
    """Explicit (unfused) attention that also reports the head-mean probabilities.

    Mirrors diffusers' reference ``AttnProcessor``; it is installed only on attention modules whose
    ``*-map`` activation was requested.
    """

    def __init__(self, on_probs: Callable[[torch.Tensor], None]):
        self.on_probs = on_probs

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, Nq, Nk)
        self.on_probs(probs.view(batch_size, attn.heads, *probs.shape[1:]).mean(1))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class ActivationCapture:
    """Context manager that records the named activations of one denoiser forward.

    Args:
        denoiser: A diffusers denoiser supported by ``list_activations``.
        names: Layer ids to capture (see ``list_activations``); unknown ids raise ``ValueError``.
        stop_early: Raise ``StopForward`` right after the last requested activation is computed, so
            the rest of the forward is skipped; the context manager swallows it.
        detach: Store detached tensors (for analysis); keep False to backpropagate through them.
        catalog: The denoiser's catalog, when the caller already has it (``activation_points``).
        reduce: ``reduce(name, activation)`` is stored instead of the activation, as each is computed:
            statistics of every activation of a forward without holding them all (screening).

    After the forward, ``activations`` maps each name to a (B, C, h, w) tensor (or its reduction).
    """

    def __init__(self, denoiser: nn.Module, names: Sequence[str], *, stop_early: bool = False,
                 detach: bool = False, catalog: Sequence[ActivationPoint] | None = None,
                 reduce: Callable[[str, torch.Tensor], object] | None = None):
        self.denoiser = denoiser
        self.names = list(dict.fromkeys(names))
        catalog = activation_points(denoiser) if catalog is None else catalog
        self.points: list[ActivationPoint] = resolve_names(catalog, self.names)
        self.stop_early = stop_early
        self.detach = detach
        self.reduce = reduce
        self.activations: dict[str, torch.Tensor] = {}
        self._grids: dict[str, tuple[int, int]] = {}
        self._handles: list = []
        self._saved_processors: dict[Attention, object] = {}

    # -- hooks ------------------------------------------------------------------------------------
    def _store(self, name: str, value: torch.Tensor) -> None:
        value = value.detach() if self.detach else value
        self.activations[name] = value if self.reduce is None else self.reduce(name, value)
        if self.stop_early and len(self.activations) == len(self.points):
            raise StopForward

    def _grid_pre_hook(self, path: str):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs['hidden_states']
            self._grids[path] = tuple(x.shape[-2:])
        return hook

    def _hook_for(self, point: ActivationPoint):
        name, grid = point.name, point.grid_module
        if point.layout == 'input':
            return lambda m, args: self._store(name, args[0])
        if point.layout == 'output':
            return lambda m, args, out: self._store(name, _first_tensor(out))
        if point.layout == 'tokens':
            return lambda m, args, out: self._store(name, tokens_to_grid(_first_tensor(out), self._grids[grid]))
        if point.layout == 'attn-map':
            # probs (B, Nq, Nk): each query pixel's distribution over keys becomes its channel vector.
            return lambda probs: self._store(name, tokens_to_grid(probs, self._grids[grid]))
        raise AssertionError(point.layout)

    def __enter__(self) -> 'ActivationCapture':
        self.activations = {}
        try:
            for path in sorted({p.grid_module for p in self.points if p.grid_module}):
                self._handles.append(self.denoiser.get_submodule(path).register_forward_pre_hook(
                    self._grid_pre_hook(path), with_kwargs=True))
            for point in self.points:
                module = self.denoiser.get_submodule(point.module)
                hook = self._hook_for(point)
                if point.layout == 'input':
                    self._handles.append(module.register_forward_pre_hook(hook))
                elif point.layout == 'attn-map':
                    self._saved_processors[module] = module.processor
                    module.set_processor(_MapAttnProcessor(hook))
                else:
                    self._handles.append(module.register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove all hooks and restore the attention processors (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, processor in self._saved_processors.items():
            module.set_processor(processor)
        self._saved_processors = {}

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.remove()
        return exc_type is not None and issubclass(exc_type, StopForward)

    @property
    def last_point(self) -> ActivationPoint:
        """The requested activation computed last: where ``stop_early`` ends the forward."""
        return max(self.points, key=lambda p: p.order)

    @property
    def complete(self) -> bool:
        """True when every requested activation was captured."""
        return len(self.activations) == len(self.points)
