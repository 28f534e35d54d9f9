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

from diffbackbones.models.catalog import ActivationPoint, activation_points, resolve_names
from diffbackbones.models.families import DenoiserFamily, family_of

__all__ = ['ActivationCapture', 'StopForward', 'HOLDS_CAPTURE', 'mark_capture_holders']

# attribute set on the denoiser modules that hold one of the backbone's capture points (mark_capture_holders)
HOLDS_CAPTURE = '_diffbackbones_holds_capture'


class StopForward(Exception):
    """Raised from a hook once every requested activation is captured; `ActivationCapture` swallows it."""


def _first_tensor(output, pick: int | None = None) -> torch.Tensor:
    # Transformer2DModel returns a dataclass / tuple whose first field is the sample; SD3 and Flux
    # blocks return (text, image) tuples, whose image part ``pick`` names.
    if isinstance(output, torch.Tensor):
        return output
    if pick is not None:
        return output[pick]
    if hasattr(output, 'sample'):
        return output.sample
    return output[0]


def _image_part(tokens: torch.Tensor, n_image: int, where: str, dim: int = 1) -> torch.Tensor:
    """The image tokens of a (text + image) sequence along ``dim``."""
    if where == 'all':
        return tokens
    start = tokens.shape[dim] - n_image if where == 'last' else 0
    return tokens.narrow(dim, start, n_image)


def _text_part(tokens: torch.Tensor, n_image: int, where: str, dim: int) -> torch.Tensor:
    """The complement of ``_image_part``: the text tokens (keys of a joint attention)."""
    n_text = tokens.shape[dim] - n_image
    return tokens.narrow(dim, 0 if where == 'last' else n_image, n_text)


def _grid_reader(denoiser: nn.Module) -> Callable:
    """How the denoiser's family reads a token grid off a module call (``DenoiserFamily.token_grid``: a (B, C, H, W)
    input; packed tokens from their position inputs, as Flux's ``img_ids``)."""
    try:
        return family_of(denoiser).token_grid
    except TypeError:  # a catalog handed in for a class no family names: the (B, C, H, W) reading
        return DenoiserFamily().token_grid


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


def _runs_fused_projections(attn: nn.Module) -> bool:
    # diffusers' Attention switches to Fused* processors (its flag stays set after unfusing); the newer
    # attention modules (FluxAttention) keep one processor that reads the flag, which unfusing clears.
    if 'Fused' in type(getattr(attn, 'processor', None)).__name__:
        return True
    return not isinstance(attn, Attention) and bool(getattr(attn, 'fused_projections', False))


class _ExplicitMapProcessor:
    """Head-mean attention probabilities recomputed with the model's own math, then the original processor.

    For the attention modules whose processors diffusers' reference math does not describe: joint
    (text + image) attention (SD3 image-first, Flux text-first, DeepFloyd IF's added k/v text-first),
    per-head qk-norm (``norm_q``/``norm_k``, ``norm_added_q``/``norm_added_k``), RoPE when the call
    carries ``image_rotary_emb`` (on the keys too unless they are text: Hunyuan's cross-attention),
    a group norm on (B, C, H, W) input (IF). softmax(q k^T * scale) is then averaged over heads. The
    original processor computes the output unchanged, so installing this never alters a feature.
    Costly (the full N x N matrix), and only installed on the modules whose maps were asked for.
    """

    def __init__(self, original, on_probs: Callable[[torch.Tensor], None], text_first: bool):
        self.original, self.on_probs, self.text_first = original, on_probs, text_first

    # Named parameters, in the order FluxAttention passes them positionally: diffusers' Attention drops
    # every keyword its processor's signature does not name (RoPE would silently vanish otherwise).
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kwargs):
        hidden, context, rope = hidden_states, encoder_hidden_states, image_rotary_emb
        if hidden.ndim == 4:  # (B, C, H, W) -> tokens, as diffusers' processors do
            hidden = hidden.flatten(2).transpose(1, 2)
        if getattr(attn, 'group_norm', None) is not None:
            hidden = attn.group_norm(hidden.transpose(1, 2)).transpose(1, 2)
        joint = context is not None and getattr(attn, 'add_k_proj', None) is not None
        cross = context is not None and not joint
        if context is not None and getattr(attn, 'norm_cross', None):
            context = attn.norm_encoder_hidden_states(context)
        heads = lambda x: x.unflatten(-1, (attn.heads, -1))  # (B, N, heads, d)
        q = heads(attn.to_q(hidden))
        k = heads(attn.to_k(context if cross else hidden))
        q = attn.norm_q(q) if getattr(attn, 'norm_q', None) is not None else q
        k = attn.norm_k(k) if getattr(attn, 'norm_k', None) is not None else k
        if joint:
            ck = heads(attn.add_k_proj(context))
            cq = heads(attn.add_q_proj(context)) if getattr(attn, 'add_q_proj', None) is not None else None
            if getattr(attn, 'norm_added_k', None) is not None:
                ck = attn.norm_added_k(ck)
                cq = attn.norm_added_q(cq) if cq is not None else None
            if getattr(attn, 'only_cross_attention', False):
                k = ck
            else:
                k = torch.cat([ck, k], 1) if self.text_first else torch.cat([k, ck], 1)
            if cq is not None:  # SD3 / Flux: text tokens also query (IF: only image queries)
                q = torch.cat([cq, q], 1) if self.text_first else torch.cat([q, cq], 1)
        if rope is not None:
            from diffusers.models.embeddings import apply_rotary_emb
            q = apply_rotary_emb(q, rope, sequence_dim=1)
            if not cross:
                k = apply_rotary_emb(k, rope, sequence_dim=1)
        scale = getattr(attn, 'scale', None) or q.shape[-1] ** -0.5
        scores = torch.einsum('bqhd,bkhd->bhqk', q.float(), k.float()) * scale
        self.on_probs(scores.softmax(-1).mean(1).to(hidden.dtype))
        if image_rotary_emb is not None:
            kwargs['image_rotary_emb'] = image_rotary_emb
        return self.original(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, **kwargs)


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
        self.catalog = catalog = activation_points(denoiser) if catalog is None else catalog
        self.points: list[ActivationPoint] = resolve_names(catalog, self.names)
        self.stop_early = stop_early
        self.detach = detach
        self.reduce = reduce
        self.activations: dict[str, torch.Tensor] = {}
        self._grids: dict[str, tuple[int, int]] = {}
        self._handles: list = []
        self._saved_processors: dict[nn.Module, object] = {}

    # -- hooks ------------------------------------------------------------------------------------
    def _store(self, name: str, value: torch.Tensor) -> None:
        value = value.detach() if self.detach else value
        self.activations[name] = value if self.reduce is None else self.reduce(name, value)
        if self.stop_early and len(self.activations) == len(self.points):
            raise StopForward

    def _grid_pre_hook(self, path: str, patch: int):
        reader = _grid_reader(self.denoiser)

        def hook(module, args, kwargs):
            self._grids[path] = reader(args, kwargs, patch)
        return hook

    def _on_grid(self, point: ActivationPoint, tokens: torch.Tensor) -> torch.Tensor:
        grid = self._grids[point.grid_module]
        return tokens_to_grid(_image_part(tokens, grid[0] * grid[1], point.image_tokens), grid)

    def _map_on_grid(self, point: ActivationPoint, probs: torch.Tensor) -> torch.Tensor:
        # probs (B, Nq, Nk): each image query's distribution over the keys becomes its channel vector;
        # in a joint attention, self-maps keep the image keys and cross-maps the text keys.
        grid = self._grids[point.grid_module]
        n, where = grid[0] * grid[1], point.image_tokens
        rows = _image_part(probs, n, where, dim=1)
        if where != 'all':
            rows = _image_part(rows, n, where, 2) if point.kind == 'self-map' else _text_part(rows, n, where, 2)
        return tokens_to_grid(rows, grid)

    def _hook_for(self, point: ActivationPoint):
        name = point.name
        if point.layout == 'input':
            return lambda m, args: self._store(name, args[0])
        if point.layout == 'output':
            return lambda m, args, out: self._store(name, _first_tensor(out))
        if point.layout == 'tokens':
            return lambda m, args, out: self._store(name, self._on_grid(point, _first_tensor(out, point.pick)))
        if point.layout == 'tokens-input':
            return lambda m, args, kwargs: self._store(
                name, self._on_grid(point, args[0] if args else kwargs['hidden_states']))
        if point.layout == 'attn-map':
            return lambda probs: self._store(name, self._map_on_grid(point, probs))
        raise AssertionError(point.layout)

    def _refuse_fused_projections(self) -> None:
        # After fuse_qkv_projections() the processors call to_qkv, so hooks on to_q / to_k / to_v (and the
        # maps, which recompute q and k from them) would silently never fire.
        for point in self.points:
            parent, _, leaf = point.module.rpartition('.')
            if leaf in ('to_q', 'to_k', 'to_v'):
                owner = parent
            elif point.layout == 'attn-map':
                owner = point.module
            else:
                continue
            if _runs_fused_projections(self.denoiser.get_submodule(owner)):
                raise ValueError(
                    f'{point.name!r} reads the separate q/k/v projections of {owner!r}, but this denoiser runs fused '
                    'QKV projections (fuse_qkv_projections() was called), whose to_q/to_k/to_v never run. Call '
                    'denoiser.unfuse_qkv_projections() before capturing, or capture block outputs only.')

    def __enter__(self) -> 'ActivationCapture':
        self.activations = {}
        _refuse_points_inside_fsdp_units(self.denoiser, self.points)  # FSDP wraps after construction
        self._refuse_fused_projections()
        try:
            grids = {p.grid_module: p.grid_patch for p in self.points if p.grid_module is not None}
            for path, patch in sorted(grids.items()):
                self._handles.append(self.denoiser.get_submodule(path).register_forward_pre_hook(
                    self._grid_pre_hook(path, patch), with_kwargs=True))
            maps: dict[nn.Module, list] = {}
            for point in self.points:
                module = self.denoiser.get_submodule(point.module)
                hook = self._hook_for(point)
                if point.layout == 'input':
                    self._handles.append(module.register_forward_pre_hook(hook))
                elif point.layout == 'tokens-input':
                    self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                elif point.layout == 'attn-map':
                    maps.setdefault(module, []).append((point, hook))
                else:
                    self._handles.append(module.register_forward_hook(hook))
            for module, wanted in maps.items():  # a joint attention gives its self- and cross-map at once
                hooks = [hook for _, hook in wanted]
                on_probs = lambda probs, hooks=hooks: [hook(probs) for hook in hooks]
                self._saved_processors[module] = module.processor
                if wanted[0][0].attention == 'explicit':
                    processor = _ExplicitMapProcessor(module.processor, on_probs, wanted[0][0].image_tokens == 'last')
                else:
                    processor = _MapAttnProcessor(on_probs)
                module.set_processor(processor)
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


def mark_capture_holders(denoiser: nn.Module, points: Sequence[ActivationPoint]) -> None:
    """Tag the modules that hold a capture point (the point's module and every module above it) with
    ``HOLDS_CAPTURE``, replacing earlier tags: what FSDP's ``diffusion_block_wrap_policy`` leaves unwrapped."""
    for module in denoiser.modules():
        module.__dict__.pop(HOLDS_CAPTURE, None)
    for point in points:
        for _, module in _modules_along(denoiser, point.module):
            setattr(module, HOLDS_CAPTURE, True)


def _modules_along(denoiser: nn.Module, path: str):
    """(path prefix, module) from the denoiser itself (``''``) down to the module at ``path``."""
    parts = path.split('.')
    for end in range(len(parts) + 1):
        prefix = '.'.join(parts[:end])
        yield prefix, denoiser.get_submodule(prefix)


def _refuse_points_inside_fsdp_units(denoiser: nn.Module, points: Sequence[ActivationPoint]) -> None:
    """A captured tensor computed inside an FSDP unit reaches the loss around the unit's outputs, where FSDP
    hooks its backward: the unit's weights are never gathered again, and backward fails deep in FSDP. Say so."""
    import torch.distributed as dist
    if not dist.is_available():
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    for point in points:
        for path, module in _modules_along(denoiser, point.module):
            if path and isinstance(module, (FullyShardedDataParallel, FSDPModule)):  # units below the denoiser
                raise RuntimeError(
                    f'activation {point.name!r} ({point.module}) lies inside the FSDP unit {path!r}: its gradient '
                    "would bypass the unit's outputs, where FSDP hooks its backward. Wrap with "
                    "auto_wrap_policy=dict(type='diffusion_block_wrap_policy'), which leaves the blocks holding "
                    'activations to the enclosing unit.')
