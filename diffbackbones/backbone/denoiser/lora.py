"""LoRA adapters, fused into the denoiser: ``DiffusionBackbone(..., lora=[('style.safetensors', 0.8)])``.

Each LoRA (a file, a folder, or a hub id ``org/name`` or ``org/name/file.safetensors``) is read and
loaded with diffusers' own LoRA loaders (``lora_state_dict`` and ``load_lora_into_unet`` /
``load_lora_into_transformer`` of the family's pipeline mixin, with peft), so every format diffusers
reads works: diffusers/peft (``lora_A``/``lora_B``), kohya (``lora_down``/``lora_up``/``alpha``), and the
Flux variants diffusers converts. Then the adapters are weighted by their scales (``set_adapters``), fused
into the weights once (``fuse_lora``) and the peft layers removed (``unload_lora``): a forward costs what
it cost without LoRA, the state-dict keys are the plain model's, and pruning and compiling see plain modules.

Which loader fits which denoiser is data (``LORA_LOADERS``, keyed by family name). Text-encoder layers
of a LoRA are not applied (the prompt embeddings come from the base text encoders); a warning says so.

``lora=dict(rank=8, targets=['to_q', 'to_k', 'to_v', 'to_out.0'])`` is the other form: a new adapter
(``TrainableLora``) is added to the frozen denoiser with diffusers' peft integration (``add_adapter``) and
stays unfused; only its ``lora_A``/``lora_B`` weights train (``add_trainable_lora``).
"""
from __future__ import annotations

import difflib
import functools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from diffbackbones.models.loading import WeightsNotFoundError, build_denoiser, hub_offline, offline_note
from diffbackbones.models.zoo import MODELS

__all__ = ['LoraLoader', 'LORA_LOADERS', 'AppliedLora', 'TrainableLora', 'normalize_lora', 'apply_lora',
           'add_trainable_lora', 'lora_loader', 'is_lora_weight']


@dataclass(frozen=True)
class LoraLoader:
    """How diffusers loads a LoRA into one denoiser family.

    Args:
        mixin: The pipeline loader mixin in ``diffusers.loaders`` whose classmethods read and load it.
        load: Its classmethod that loads a state dict into the denoiser.
        component: The denoiser's keyword in ``load`` and its key prefix in LoRA files (``unet``, ``transformer``).
        read_options: Extra keywords of ``lora_state_dict`` (Flux returns its alphas only when asked).
        config_keyword: ``lora_state_dict``'s keyword for the denoiser config, where it takes one (SDXL
            kohya files name blocks the original way; the config maps them to diffusers' names).
    """

    mixin: str
    load: str
    component: str
    read_options: Mapping[str, Any] = field(default_factory=dict)
    config_keyword: str | None = None

    def mixin_class(self):
        import diffusers.loaders
        return getattr(diffusers.loaders, self.mixin)


# family name (families.FAMILIES) -> loader; families without an entry have no diffusers LoRA loader
LORA_LOADERS: dict[str, LoraLoader] = {
    'unet': LoraLoader('StableDiffusionLoraLoaderMixin', 'load_lora_into_unet', 'unet', config_keyword='unet_config'),
    'sd3': LoraLoader('SD3LoraLoaderMixin', 'load_lora_into_transformer', 'transformer'),
    'flux': LoraLoader('FluxLoraLoaderMixin', 'load_lora_into_transformer', 'transformer',
                       read_options={'return_alphas': True}),
    'chroma': LoraLoader('FluxLoraLoaderMixin', 'load_lora_into_transformer', 'transformer',
                         read_options={'return_alphas': True}),  # ChromaPipeline loads with Flux's
    **{family: LoraLoader(f'{mixin}LoraLoaderMixin', 'load_lora_into_transformer', 'transformer')
       for family, mixin in (('flux2', 'Flux2'), ('qwen_image', 'QwenImage'), ('zimage', 'ZImage'), ('sana', 'Sana'),
                             ('lumina2', 'Lumina2'), ('cogview4', 'CogView4'), ('wan', 'Wan'),
                             ('hidream', 'HiDreamImage'))},
}


@dataclass(frozen=True)
class AppliedLora:
    """One LoRA fused into the denoiser: where it came from, its scale, and how many layers it changed."""

    source: str
    scale: float
    layers: int


def _is_source(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def _is_scale(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainableLora:
    """A new LoRA adapter to train on the frozen denoiser: ``lora=dict(rank=8, targets=['to_q', 'to_v'])``.

    Args:
        rank: The adapters' rank r (a positive integer).
        targets: Module names the adapter wraps, as peft matches them: a module whose path is a name or
            ends with ``.`` + the name (``'to_q'``, ``'to_out.0'``, ``'attn1.to_k'``, ``'proj_in'``).
        alpha: peft's ``lora_alpha``: the update is scaled by alpha / rank. ``None``: alpha = rank (scale 1).
        dropout: Dropout on the adapters' input while the backbone trains (``lora_dropout``), in [0, 1).
    """

    rank: int
    targets: tuple[str, ...]
    alpha: float | None = None
    dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f'lora=dict(rank=...) must be a positive integer (the adapter rank, e.g. 4, 8, 16); '
                             f'got {self.rank!r}')
        targets = (self.targets,) if isinstance(self.targets, str) else self.targets
        if (not isinstance(targets, (tuple, list)) or not targets
                or not all(isinstance(t, str) and t.strip('.') for t in targets)):
            raise ValueError("lora=dict(targets=...) must be a non-empty list of module names, e.g. "
                             f"targets=['to_q', 'to_k', 'to_v', 'to_out.0']; got {self.targets!r}")
        object.__setattr__(self, 'targets', tuple(targets))
        if self.alpha is not None and (not _is_scale(self.alpha) or not 0 < self.alpha < float('inf')):
            raise ValueError(f'lora=dict(alpha=...) must be a positive number (updates are scaled by alpha / '
                             f'rank) or None (alpha = rank); got {self.alpha!r}')
        if not _is_scale(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f'lora=dict(dropout=...) must be a number in [0, 1); got {self.dropout!r}')

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> 'TrainableLora':
        """From ``lora=dict(...)``: unknown keys are refused with the closest valid one."""
        fields = ['rank', 'targets', 'alpha', 'dropout']
        unknown = [k for k in options if k not in fields]
        if unknown:
            hints = {k: difflib.get_close_matches(str(k), fields, n=1) for k in unknown}
            raise ValueError('unknown lora=dict(...) key(s) ' + ', '.join(
                f'{k!r}' + (f' (did you mean {h[0]!r}?)' if h else '') for k, h in hints.items()) +
                f'; a trainable LoRA takes {fields} (rank and targets required), e.g. '
                "lora=dict(rank=8, targets=['to_q', 'to_k', 'to_v', 'to_out.0']).")
        missing = [k for k in ('rank', 'targets') if k not in options]
        if missing:
            raise ValueError(f'lora=dict(...) lacks {missing}: a trainable LoRA needs its rank and the module names '
                             "it wraps, e.g. lora=dict(rank=8, targets=['to_q', 'to_k', 'to_v', 'to_out.0']).")
        return cls(**options)

    def peft_config(self):
        from peft import LoraConfig
        return LoraConfig(r=self.rank, lora_alpha=self.rank if self.alpha is None else self.alpha,
                          lora_dropout=float(self.dropout), target_modules=list(self.targets))


def normalize_lora(value: Any) -> tuple[tuple[str, float], ...] | TrainableLora:
    """The ``lora`` option as a tuple of ``(source, scale)`` to fuse, or a ``TrainableLora`` to train.

    Accepts one source (a path or hub id), ``(source, scale)``, or a list of either (lists of two, as
    configs write tuples, count as pairs); or a dict (or ``TrainableLora``): a new adapter to train,
    ``dict(rank=8, targets=[...], alpha=None, dropout=0.0)``. Files to fuse and an adapter to train cannot
    be combined in one backbone.
    """
    if value is None:
        return ()
    if isinstance(value, TrainableLora):
        return value
    if isinstance(value, Mapping):
        return TrainableLora.from_options(value)
    if isinstance(value, (tuple, list)) and any(isinstance(v, (Mapping, TrainableLora)) for v in value):
        raise ValueError(f'lora= takes LoRA files to fuse or one dict(rank=..., targets=...) to train, not both '
                         f'(got {value!r}): fusing files under a trainable adapter is not supported yet. Fuse '
                         'them into a saved model first, or train without them.')
    if _is_source(value):
        value = [value]
    elif isinstance(value, (tuple, list)) and len(value) == 2 and _is_source(value[0]) and _is_scale(value[1]):
        value = [value]  # one (source, scale)
    if not isinstance(value, (tuple, list)):
        raise ValueError(f'lora= takes a LoRA file, folder or hub id, (source, scale), or a list of them; '
                         f'got {value!r}')
    pairs = []
    for item in value:
        if _is_source(item):
            item = (item, 1.0)
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and _is_source(item[0]) and _is_scale(item[1])):
            raise ValueError(f'each lora= entry must be a source (path or hub id) or (source, scale) with a number '
                             f'scale; got {item!r}')
        source, scale = os.fspath(item[0]), float(item[1])
        if not source or scale != scale or abs(scale) == float('inf'):
            raise ValueError(f'lora= entry {item!r}: the source must be non-empty and the scale finite')
        pairs.append((source, scale))
    return tuple(pairs)


def lora_loader(family) -> LoraLoader:
    """The family's diffusers LoRA loader; a ``ValueError`` naming the families that have one otherwise."""
    if family.name not in LORA_LOADERS:
        from diffbackbones.models.families import FAMILIES
        supported = [f'{name} ({FAMILIES[name].class_name})' for name in LORA_LOADERS if name in FAMILIES]
        raise ValueError(f'diffusers has no LoRA loader for {family.class_name} (family {family.name!r}), so lora= '
                         f'cannot be applied to it. LoRA works for: {", ".join(supported)}.')
    return LORA_LOADERS[family.name]


def apply_lora(denoiser: nn.Module, family, loras: tuple[tuple[str, float], ...],
               model_name: str = '') -> list[AppliedLora]:
    """Load ``loras`` into ``denoiser`` with diffusers' loader for ``family``, fuse them, remove peft's layers.

    Args:
        denoiser: The diffusers denoiser, changed in place.
        family: Its ``DenoiserFamily``.
        loras: ``(source, scale)`` pairs (``normalize_lora``).
        model_name: The zoo name, for error messages.

    Returns:
        What was applied, one ``AppliedLora`` per entry.

    Raises:
        ValueError: no diffusers loader for the family; a file that is not a LoRA; a LoRA made for another
            architecture (the message names the zoo models it fits, as far as its keys tell).
        WeightsNotFoundError: a missing file, or a hub id not found (offline: not in the local cache).
    """
    if not loras:
        return []
    loader = lora_loader(family)
    from diffusers.utils import USE_PEFT_BACKEND
    if not USE_PEFT_BACKEND:
        raise ImportError('lora= needs peft (and transformers) installed: pip install peft')
    from peft.tuners.tuners_utils import BaseTunerLayer

    mixin = loader.mixin_class()
    model = f'{model_name} ({type(denoiser).__name__})' if model_name else f'this {type(denoiser).__name__}'
    names, applied = [], []
    on_meta = any(p.is_meta for p in denoiser.parameters())
    for i, (source, scale) in enumerate(loras):
        state_dict, alphas, metadata = _read(mixin, loader, denoiser, source)
        layers = _check_fits(state_dict, denoiser, loader, source, model)
        applied.append(AppliedLora(source, scale, layers))
        if on_meta:  # shapes only: a fused weight has the shape it had, so reading and checking is all there is
            continue
        name = f'diffbackbones_lora{i}'
        load = getattr(mixin, loader.load)
        kwargs = {loader.component: denoiser, 'adapter_name': name, 'metadata': metadata}
        if 'network_alphas' in _parameters(load):
            kwargs['network_alphas'] = alphas
        with warnings.catch_warnings():  # peft warns about a second adapter, which is what combining LoRAs is
            warnings.filterwarnings('ignore', message='Already found a `peft_config`')
            load(state_dict, **kwargs)
        names.append(name)
    if on_meta:
        return applied
    # diffusers' own way to combine adapters: each one's scaling becomes scale * alpha / rank, then all merge
    denoiser.set_adapters(names, weights=[scale for _, scale in loras])
    denoiser.fuse_lora(adapter_names=names)
    denoiser.unload_lora()
    left = [n for n, m in denoiser.named_modules() if isinstance(m, BaseTunerLayer)]
    if left:  # a forward must cost what it cost without LoRA
        raise RuntimeError(f'peft LoRA layers remained after fusing: {left[:5]}')
    return applied


# the state-dict names of peft's adapter weights: ...to_q.lora_A.default.weight, ...lora_B..., DoRA's magnitude
_ADAPTER_KEY = re.compile(r'(?:^|.*\.)lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\..+')


def is_lora_weight(key: str) -> bool:
    """Whether a state-dict key (or parameter name) is a peft LoRA adapter weight."""
    return _ADAPTER_KEY.fullmatch(key) is not None


def add_trainable_lora(denoiser: nn.Module, lora: TrainableLora, model_name: str = '') -> list[AppliedLora]:
    """Add a new, unfused LoRA adapter to ``denoiser`` (diffusers' ``add_adapter``, peft), in place.

    peft's default init (B = 0) makes the adapted denoiser compute exactly what the base one does until
    the adapter trains. Only the adapter's weights train (``DenoiserStage.set_requires_grad``).

    Returns:
        One ``AppliedLora`` (source ``'trainable'``, scale 1) with the number of layers wrapped.

    Raises:
        ValueError: a target that names no layer of the denoiser (the message lists the layer names there
            are, the closest first); a denoiser without diffusers' peft integration.
        ImportError: peft is not installed.
    """
    from diffusers.utils import USE_PEFT_BACKEND
    if not USE_PEFT_BACKEND:
        raise ImportError('lora=dict(...) needs peft (and transformers) installed: pip install peft')
    from peft.tuners.tuners_utils import BaseTunerLayer
    model = f'{model_name} ({type(denoiser).__name__})' if model_name else type(denoiser).__name__
    if not hasattr(denoiser, 'add_adapter'):
        raise ValueError(f'{model} has no peft integration in diffusers (add_adapter), so lora=dict(...) cannot '
                         'add a trainable adapter to it.')
    layers = [name for name, m in denoiser.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding))]
    for target in lora.targets:
        if not any(name == target or name.endswith(f'.{target}') for name in layers):
            names = sorted({'.'.join(n.split('.')[-2:]) if n.split('.')[-1].isdigit() else n.split('.')[-1]
                            for n in layers})
            close = difflib.get_close_matches(target, names, n=3)
            hint = f' Did you mean {" or ".join(map(repr, close))}?' if close else ''
            raise ValueError(f'lora=dict(targets=...): {target!r} names no layer of {model}.{hint} Its linear and '
                             f'convolution layers are named: {names}.')
    denoiser.add_adapter(lora.peft_config())
    wrapped = [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]
    for m in wrapped:  # peft's wrappers name sizes in_/out_features only; the catalog reads a conv's channels
        base = m.get_base_layer()
        if isinstance(base, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            m.in_channels, m.out_channels = base.in_channels, base.out_channels
    return [AppliedLora('trainable', 1.0, len(wrapped))]


def adapter_free_prefixes(module: nn.Module) -> tuple[str, ...]:
    """The fewest state-dict prefixes of ``module`` that cover every key except the LoRA adapter weights:
    whole subtrees (``'down_blocks.0.resnets.'``) where no adapter lies, single keys (``'...to_q.base_layer.weight'``
    as its own prefix) beside them."""
    keys = list(module.state_dict(keep_vars=True))
    kept = [k for k in keys if is_lora_weight(k)]
    above_kept = {'.'.join(parts[:i]) for parts in (k.split('.') for k in kept) for i in range(1, len(parts) + 1)}
    prefixes: dict[str, None] = {}
    for key in keys:
        if key in above_kept:
            continue
        parts = key.split('.')
        i = next(i for i in range(1, len(parts) + 1) if '.'.join(parts[:i]) not in above_kept)
        prefixes['.'.join(parts[:i]) + ('.' if i < len(parts) else '')] = None
    frozen = tuple(prefixes)
    assert not any(k.startswith(frozen) for k in kept), 'a frozen key is a prefix of an adapter key'
    return frozen


@functools.lru_cache(maxsize=None)
def _parameters(function) -> tuple[str, ...]:
    import inspect
    return tuple(inspect.signature(function).parameters)


_HUB = re.compile(r'([\w.-]+/[\w.-]+)(?:/(.+))?')


def _read(mixin, loader: LoraLoader, denoiser: nn.Module, source: str):
    """(state dict with the denoiser's prefix, network alphas or None, adapter metadata or None)."""
    path = Path(source).expanduser()
    hub = None if path.exists() else _HUB.fullmatch(source)
    if hub is not None and hub.group(2) is None and source.endswith(_WEIGHT_SUFFIXES):
        hub = None  # 'folder/style.safetensors' is a path; a hub id with its file has three parts
    if not path.exists() and (hub is None or source.startswith(('.', '/', '~'))):
        where = '' if path.is_absolute() else f' (relative to {Path.cwd()})'
        raise WeightsNotFoundError(f'LoRA file or folder not found: {source!r}{where}; give the path '
                                   'of a .safetensors file or a folder holding one, or a hub id (org/name or '
                                   'org/name/file.safetensors).')
    options = dict(loader.read_options, return_lora_metadata=True)
    if loader.config_keyword:
        options[loader.config_keyword] = denoiser.config
    if hub is not None:
        target, options['weight_name'] = hub.group(1), hub.group(2)
        if hub.group(2) is None and hub_offline():  # diffusers guesses the file name online only: use the cached copy
            target = _cached_snapshot(hub.group(1), source)
    else:
        target = str(path)
    try:
        out = mixin.lora_state_dict(target, **options)
    except Exception as e:  # noqa: BLE001 - the loaders raise OSError, ValueError, safetensors and hub errors
        if hub is not None:
            raise _not_on_hub(source, hub.group(1), e) from e
        raise ValueError(f'{source!r} could not be read as a LoRA file (safetensors or a torch state dict): '
                         f'{type(e).__name__}: {e}') from e
    state_dict, *rest = out
    alphas, metadata = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
    return _own_keys(state_dict, mixin, loader, source), alphas or None, metadata


_WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.ckpt')


def _not_on_hub(source: str, repo: str, error: Exception) -> Exception:
    return WeightsNotFoundError(
        f'LoRA {source!r} is not a local file or folder, and loading it as a hub id failed'
        f'{offline_note()}: '
        f'{type(error).__name__}: {error}\nFix: download it once (`huggingface-cli download {repo}`) or give the '
        'path of the .safetensors file.')


def _cached_snapshot(repo: str, source: str) -> str:
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(repo, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - LocalEntryNotFoundError, or an invalid repo id
        raise _not_on_hub(source, repo, e) from e


def _own_keys(state_dict: dict, mixin, loader: LoraLoader, source: str) -> dict:
    """The denoiser's LoRA keys, prefixed with its component name; text-encoder keys dropped (with a warning)."""
    if not state_dict or not any('lora' in k for k in state_dict):
        raise ValueError(f'{source!r} is not a LoRA: none of its {len(state_dict)} keys is a LoRA weight '
                         f'(e.g. {sorted(state_dict)[:3]}); expected diffusers/peft keys (...lora_A.weight, '
                         '...lora_B.weight) or kohya keys (...lora_down.weight, ...lora_up.weight, ...alpha).')
    not_lora = [k for k in state_dict if 'lora' not in k]
    if not_lora:
        raise ValueError(f'{source!r} mixes LoRA weights with other weights (e.g. {not_lora[:3]}); '
                         'only LoRA files can be given as lora=.')
    components = set(getattr(mixin, '_lora_loadable_modules', ())) | {loader.component}
    own, others = {}, set()
    for key, value in state_dict.items():
        head = key.split('.', 1)[0]
        if head == loader.component:
            own[key] = value
        elif head in components:
            others.add(head)
        else:  # a bare state dict of the denoiser itself
            own[f'{loader.component}.{key}'] = value
    if others:
        warnings.warn(f'LoRA {source!r} also holds layers for {sorted(others)}: only its {loader.component} layers '
                      'are applied (the prompt embeddings come from the base text encoders).', stacklevel=4)
    if not own:
        raise ValueError(f'LoRA {source!r} holds no {loader.component} layers (only {sorted(others)}).')
    return own


_LAYER_KEY = re.compile(r'(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight')


def _lora_layers(state_dict: dict, prefix: str) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module path (prefix removed) -> {'A': shape, 'B': shape} of a LoRA state dict."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    keys = {k.removeprefix(f'{prefix}.'): v for k, v in state_dict.items()}
    if not any('lora_A' in k for k in keys):  # diffusers' older key names, converted as its loader does
        keys = convert_unet_state_dict_to_peft(keys)
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, value in keys.items():
        m = _LAYER_KEY.fullmatch(key)
        if m:
            layers.setdefault(m.group(1), {})[m.group(2)] = tuple(value.shape)
    return layers


def _misfits(layers: dict, weights: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Each LoRA layer that has no module of its shape in a model whose weight shapes are ``weights``."""
    bad = []
    for path, ab in sorted(layers.items()):
        shape = weights.get(path)
        a, b = ab.get('A'), ab.get('B')
        if shape is None:
            bad.append(f'{path} (no such layer)')
        elif a is None or b is None or len(shape) < 2 or a[1] != shape[1] or b[0] != shape[0]:
            width = shape[1] if len(shape) > 1 else '?'
            bad.append(f'{path} (LoRA {a and a[1]}->{b and b[0]}, model {width}->{shape[0]})')
    return bad


def _weight_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(m.weight.shape) for name, m in module.named_modules()
            if isinstance(getattr(m, 'weight', None), torch.Tensor)}


@functools.lru_cache(maxsize=None)
def _zoo_weight_shapes(model: str) -> dict[str, tuple[int, ...]]:
    return _weight_shapes(build_denoiser(MODELS[model], 'meta'))


def _fitting_zoo_models(layers: dict) -> list[str]:
    """The zoo models every layer of a LoRA fits (built on the meta device: shapes only)."""
    fits = []
    for name in MODELS:
        try:
            if not _misfits(layers, _zoo_weight_shapes(name)):
                fits.append(name)
        except Exception:  # noqa: BLE001 - a zoo entry that cannot be built is simply no candidate
            continue
    return fits


def _check_fits(state_dict: dict, denoiser: nn.Module, loader: LoraLoader, source: str, model: str) -> int:
    """The number of LoRA layers; a ``ValueError`` when any of them does not fit ``denoiser``."""
    layers = _lora_layers(state_dict, loader.component)
    if not layers:
        raise ValueError(f'{source!r} holds no LoRA layers diffusers can read (keys such as '
                         f'{sorted(state_dict)[:3]}).')
    bad = _misfits(layers, _weight_shapes(denoiser))
    if bad:
        fits = _fitting_zoo_models(layers)
        made_for = (f'By its layer names and shapes it was made for: {", ".join(fits)}.' if fits else
                    'Its layer names and shapes fit none of the zoo models.')
        raise ValueError(f'LoRA {source!r} does not fit {model}: {len(bad)} of its '
                         f'{len(layers)} layers do not match, e.g. {"; ".join(bad[:3])}. {made_for} '
                         'Use a LoRA trained for this model.')
    return len(layers)
