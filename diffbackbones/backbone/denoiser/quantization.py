"""Quantized frozen denoisers, through the quantization backends diffusers itself uses (torchao, bitsandbytes).

``denoiser=dict(quantization=...)`` takes a short form or any diffusers quantization config:

- ``'int8'``: ``TorchAoConfig(Int8WeightOnlyConfig())``, on CPUs and GPUs;
- ``'float8'``: ``TorchAoConfig(Float8WeightOnlyConfig())``, fast on Hopper GPUs (the CPU emulates it);
- ``'nf4'``: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')``, CUDA GPUs only.

What is quantized is what pruning kept, after pruning (``DiffusionBackbone``): the linear layers of the denoiser,
as diffusers' own torchao and bitsandbytes loaders do, except a config's ``modules_to_not_convert`` and a trainable
LoRA adapter's own weights. The VAE, the convolutions and the captured activations stay in the compute dtype.

A quantized denoiser does not train (its integer weights have no gradient): ``trainable=True`` is refused, and a
LoRA adapter on it (``lora=dict(rank=..., targets=...)``, as QLoRA trains) is what trains instead; peft wraps the
quantized layers and its adapter weights get the gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ['QUANTIZATION_SHORT_FORMS', 'Quantization', 'normalize_quantization']

QUANTIZATION_SHORT_FORMS = ('int8', 'float8', 'nf4')


@dataclass(frozen=True)
class Quantization:
    """A diffusers quantization config and the short name it was given by (``'custom'`` for a config object)."""

    name: str
    config: Any

    @property
    def backend(self) -> str:
        """``'torchao'`` or ``'bitsandbytes'``."""
        return 'bitsandbytes' if type(self.config).__name__ == 'BitsAndBytesConfig' else 'torchao'

    def apply(self, denoiser: nn.Module, dtype: torch.dtype) -> list[str]:
        """Quantize ``denoiser``'s linear layers in place; the paths of those quantized."""
        if self.backend == 'bitsandbytes':
            _require_cuda_and_bitsandbytes(self.name)
        skip = tuple(getattr(self.config, 'modules_to_not_convert', None) or ())
        targets = [name for name, m in denoiser.named_modules()
                   if type(m) is nn.Linear and not _is_adapter_weight(name) and not any(s in name for s in skip)]
        if not targets:
            return []
        if self.backend == 'torchao':
            from torchao.quantization import quantize_
            chosen = set(targets)
            quantize_(denoiser, self.config.get_apply_tensor_subclass(), filter_fn=lambda m, name: name in chosen)
        else:
            compute_dtype = dtype if self.name == 'nf4' else self.config.bnb_4bit_compute_dtype  # the short form's
            for name in targets:                                                               # is the backbone's
                _replace(denoiser, name, _bnb_linear(denoiser.get_submodule(name), self.config, compute_dtype))
        return targets


def normalize_quantization(value: Any) -> Quantization | None:
    """``None``, a short form (``QUANTIZATION_SHORT_FORMS``) or a diffusers ``TorchAoConfig`` /
    ``BitsAndBytesConfig``, as a ``Quantization``."""
    if value is None or isinstance(value, Quantization):
        return value
    if isinstance(value, str):
        return Quantization(value, _short_form(value))
    if type(value).__name__ in ('TorchAoConfig', 'BitsAndBytesConfig'):
        if type(value).__name__ == 'BitsAndBytesConfig' and not value.load_in_4bit and not value.load_in_8bit:
            raise ValueError('BitsAndBytesConfig quantizes nothing unless load_in_4bit or load_in_8bit is set')
        return Quantization('custom', value)
    if type(value).__name__ == 'GGUFQuantizationConfig':
        raise ValueError("GGUF weights are already quantized: pass the file as pretrained='denoiser.gguf' instead of "
                         'a quantization config')
    raise ValueError(f'quantization must be one of {list(QUANTIZATION_SHORT_FORMS)}, a diffusers TorchAoConfig or '
                     f'BitsAndBytesConfig, or None; got {value!r}')


def _short_form(name: str) -> Any:
    if name not in QUANTIZATION_SHORT_FORMS:
        raise ValueError(f'unknown quantization {name!r}; short forms: {list(QUANTIZATION_SHORT_FORMS)} (or pass a '
                         'diffusers TorchAoConfig / BitsAndBytesConfig)')
    from diffusers import BitsAndBytesConfig, TorchAoConfig
    if name == 'nf4':
        _require_cuda_and_bitsandbytes(name)  # before diffusers' config, whose own check names neither
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')  # computes in the backbone's dtype
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig
    except ImportError as e:
        raise RuntimeError(f'quantization={name!r} needs torchao: pip install "diffbackbones[quant]" '
                           '(or pip install torchao==0.18.0)') from e
    return TorchAoConfig(Int8WeightOnlyConfig() if name == 'int8' else Float8WeightOnlyConfig())


def _require_cuda_and_bitsandbytes(name: str) -> None:
    """Refuse, by name, bitsandbytes where it cannot run."""
    if not torch.cuda.is_available():
        raise RuntimeError(f"quantization={name!r} (bitsandbytes) needs a CUDA GPU and none is visible; on the CPU "
                           "use quantization='int8' (torchao int8 weight-only).")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f'quantization={name!r} needs bitsandbytes: pip install bitsandbytes') from e


def _is_adapter_weight(name: str) -> bool:
    return any(part.startswith('lora_') for part in name.split('.'))


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition('.')
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _bnb_linear(linear: nn.Linear, config: Any, compute_dtype: torch.dtype) -> nn.Module:
    """bitsandbytes' layer holding ``linear``'s weights; moving it to the GPU quantizes them (bitsandbytes' way)."""
    import bitsandbytes as bnb
    bias = linear.bias is not None
    if config.load_in_4bit:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias,
                                  compute_dtype=compute_dtype,
                                  quant_type=config.bnb_4bit_quant_type, device='meta')
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type=config.bnb_4bit_quant_type)
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                    device='meta')
        layer.weight = bnb.nn.Int8Params(linear.weight.data, requires_grad=False, has_fp16_weights=False)
    if bias:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.cuda()
