"""The denoise-and-capture stage: one batched denoiser forward, stopped right after the last requested
activation, with the parts it never needs pruned and, optionally, the parts without hooks compiled.

``denoiser=dict(trainable=False, prune=True, compile=False, quantization=None, offload=None)`` in a backbone's
options (the flat keywords ``trainable_denoiser``, ``prune`` and ``compile`` map here, ``stages.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .capture import ActivationCapture
from .lora import (AppliedLora, TrainableLora, adapter_free_prefixes, add_trainable_lora, apply_lora, is_lora_weight,
                   normalize_lora)
from .pruning import SkippedLinear, prune_later_blocks, prune_unexecuted
from .offload import normalize_offload
from .quantization import normalize_quantization

__all__ = ['DenoiserStage']


@dataclass
class DenoiserStage:
    """Runs the denoiser and captures the requested activations.

    Args:
        trainable: Let gradients reach the denoiser (it is frozen and in eval mode otherwise, also after
            ``.train()``).
        prune: Drop the denoiser modules that run after the last requested activation (measured with one
            probe forward at construction); they are never computed anyway.
        compile: ``torch.compile`` the denoiser parts that hold no capture point (the forward stops by an
            exception at the last activation, which compiled graphs must not contain).
        lora: LoRA adapters fused into the denoiser weights once, at construction (``lora.py``): one file,
            folder or hub id, or a list of them, each alone or as ``(source, scale)``; e.g.
            ``lora=[('style.safetensors', 0.8)]``. Normalised to a tuple of ``(source, scale)``. With
            ``trainable=True`` the fused weights are where training starts (the whole denoiser trains, with
            the plain model's parameters). ``lora=dict(rank=8, targets=['to_q', 'to_v'], alpha=None,
            dropout=0.0)`` instead adds a new adapter (``TrainableLora``) that trains on the frozen denoiser
            (``trainable`` must stay False): only its ``lora_A``/``lora_B`` weights get gradients, and lean
            checkpoints hold them (``frozen_prefixes``).
        quantization: Quantize the frozen denoiser after pruning (``quantization.py``): ``'int8'`` (torchao
            int8 weight-only, CPU and GPU), ``'float8'`` (torchao, Hopper GPUs), ``'nf4'`` (bitsandbytes, CUDA),
            or any diffusers ``TorchAoConfig`` / ``BitsAndBytesConfig``. A GGUF file is given as
            ``pretrained='denoiser.gguf'`` instead.
        offload: Keep the frozen denoiser in CPU memory and move its blocks to the GPU in turn (diffusers' group
            offloading, ``offload.py``): ``'block'``, ``'leaf'``, or ``dict(type='block', blocks_per_group=1,
            use_stream=False)``.
    """

    trainable: bool = False
    prune: bool = True
    compile: bool = False
    lora: Any = ()
    quantization: Any = None
    offload: Any = None

    def __post_init__(self):
        for name in ('trainable', 'prune', 'compile'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'denoiser {name} must be True or False; got {getattr(self, name)!r}')
        self.lora = normalize_lora(self.lora)
        self.quantization = normalize_quantization(self.quantization)
        self.offload = normalize_offload(self.offload)
        if self.offload is not None and (self.trainable or self.compile):
            raise ValueError('offload=... is for a frozen denoiser run eagerly: drop trainable=True and compile=True '
                             '(or drop offload)')
        if self.trainable and self.quantization is not None:
            raise ValueError(f'a quantized denoiser (quantization={self.quantization.name!r}) cannot train: its '
                             'integer weights have no gradient. Train a LoRA adapter on it instead, as QLoRA does: '
                             "denoiser=dict(quantization=..., lora=dict(rank=8, targets=['to_q', 'to_k', 'to_v'])).")
        if self.trainable and isinstance(self.lora, TrainableLora):
            raise ValueError('denoiser trainable=True trains the whole denoiser, lora=dict(...) trains a LoRA adapter '
                             'on a frozen one: give one of them (timm entries train the denoiser unless built with '
                             'frozen=True or trainable_denoiser=False).')

    @property
    def trains(self) -> bool:
        """Whether any denoiser weight trains (the whole denoiser, or a trainable LoRA adapter)."""
        return self.trainable or isinstance(self.lora, TrainableLora)

    def load_lora(self, denoiser: nn.Module, family, model_name: str = '') -> list[AppliedLora]:
        """Fuse the ``lora`` adapters into ``denoiser`` (in place, no peft layers left), or add the trainable
        adapter (``lora=dict(...)``, peft layers stay); what was applied. ``model_name`` (the zoo name) makes
        error messages name the model. Call it before pruning: pruning then sees the adapted layers."""
        if isinstance(self.lora, TrainableLora):
            return add_trainable_lora(denoiser, self.lora, model_name)
        return apply_lora(denoiser, family, self.lora, model_name)

    def check_weights(self, gguf: bool) -> None:
        """Refuse what a denoiser loaded quantized (``pretrained='denoiser.gguf'``) cannot do."""
        if not gguf:
            return
        if self.quantization is not None:
            raise ValueError(f'pretrained= is a GGUF file, whose weights are quantized already; drop '
                             f'quantization={self.quantization.name!r}.')
        if self.trainable:
            raise ValueError('a GGUF denoiser cannot train (its quantized weights have no gradient); train a LoRA '
                             "adapter on it instead: denoiser=dict(lora=dict(rank=8, targets=['to_q', 'to_v'])).")

    def prepare(self, denoiser: nn.Module, capture: ActivationCapture, prune_tail: Callable[[], list[str]] | None,
                dtype: torch.dtype, channels_last: bool | None) -> tuple[list[str], list[str], list[str]]:
        """The loaded denoiser made ready, in this order: pruned (``prune_tail()``, unless ``prune=False`` or
        None is given), the linear layers pruning kept quantized, pinned to CPU memory when offloaded
        (``Offload.pin``), channels-last if asked, its hook-free parts compiled. The paths pruned, quantized
        and compiled."""
        pruned = prune_tail() if self.prune and prune_tail is not None else []
        quantized = self.quantization.apply(denoiser, dtype) if self.quantization is not None else []
        if self.offload is not None:
            self.offload.pin(denoiser)
        if channels_last:
            denoiser.to(memory_format=torch.channels_last)
        compiled = self.compile_parts(denoiser, capture) if self.compile else []
        return pruned, quantized, compiled

    def set_requires_grad(self, denoiser: nn.Module) -> None:
        """Freeze the denoiser unless ``trainable``; a trainable LoRA adapter's weights train either way."""
        denoiser.requires_grad_(self.trainable)
        if isinstance(self.lora, TrainableLora):
            for name, p in denoiser.named_parameters():
                if is_lora_weight(name):
                    p.requires_grad_(True)

    def train_adapters(self, denoiser: nn.Module, mode: bool) -> None:
        """A frozen denoiser stays in eval mode; a trainable adapter's dropout follows the backbone's mode."""
        if isinstance(self.lora, TrainableLora):
            for name, m in denoiser.named_modules():
                if name.endswith('lora_dropout') or '.lora_dropout.' in name:
                    m.train(mode)

    def frozen_prefixes(self, denoiser: nn.Module) -> tuple[str, ...]:
        """State-dict prefixes (within the denoiser) of the weights that do not train: none when it trains,
        all of it (``''``) when frozen, all but the adapter weights with a trainable LoRA."""
        if self.trainable:
            return ()
        if isinstance(self.lora, TrainableLora):
            return adapter_free_prefixes(denoiser)
        return ('',)

    def __call__(self, denoiser: nn.Module, capture: ActivationCapture, kwargs: dict, members: int,
                 keep_graph: bool) -> dict[str, torch.Tensor]:
        """One forward of ``members * B`` rows (member-major); the member-averaged activations by name.

        ``keep_graph``: build a graph when anything upstream trains (a trainable VAE needs it through a
        frozen denoiser)."""
        if self.offload is not None:
            self.offload.attach(denoiser, next(v.device for v in kwargs.values() if torch.is_tensor(v)))
        with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()), capture:
            denoiser(**kwargs)
        captured, capture.activations = capture.activations, {}
        if len(captured) != len(capture.points):
            missing = sorted({p.name for p in capture.points} - set(captured))
            raise RuntimeError(f'the denoiser forward did not produce {missing}')
        if members == 1:
            return captured
        return {name: a.view(members, -1, *a.shape[1:]).mean(0) for name, a in captured.items()}

    @staticmethod
    def prune_tail(denoiser: nn.Module, capture: ActivationCapture, probe_inputs: Callable[[], dict]) -> list[str]:
        """Drop the denoiser modules that run after the last requested activation, and the projections
        that run before it but feed none of the activations; returns their paths.

        ``probe_inputs()`` gives the keyword arguments of one forward at the smallest valid latent size,
        from an input that requires grad (not the weights: no weight gradient is allocated), which is what
        tells a projection that feeds nothing (see ``pruning.py``).
        """
        def run():
            with torch.enable_grad(), capture:
                denoiser(**probe_inputs())
            captured, capture.activations = list(capture.activations.values()), {}
            return captured
        try:
            return _whole_adapted_layers(denoiser, prune_unexecuted(denoiser, run))
        except (RuntimeError, NotImplementedError):
            # on the meta device a forward that reads values (caption lengths) cannot run: prune by catalog order
            if next(denoiser.parameters()).device.type != 'meta':
                raise
            capture.remove()
            return prune_later_blocks(denoiser, capture.catalog, capture.points)

    @staticmethod
    def compile_parts(denoiser: nn.Module, capture: ActivationCapture) -> list[str]:
        """Compile the largest denoiser parts that contain no hooked module (and were not pruned)."""
        hooked = {p.module for p in capture.points} | {p.grid_module for p in capture.points if p.grid_module}
        compiled = []

        def visit(name: str, module: nn.Module) -> None:
            for child_name, child in module.named_children():
                path = f'{name}.{child_name}' if name else child_name
                contains_hook = any(h == path or h.startswith(path + '.') for h in hooked)
                if isinstance(child, (nn.ModuleList, nn.ModuleDict)) or contains_hook:
                    visit(path, child)
                elif next(child.parameters(), None) is not None:  # pruned and skipped parts hold none
                    child.compile()
                    compiled.append(path)
        visit('', denoiser)
        # nn.Module.compile() routes every part through one shared wrapper function, so all parts'
        # graphs (one or two per part: static, then dynamic shapes) count against that one function's
        # recompile limit. At dynamo's default of 8, most of sd15's 52 parts fell back to eager with
        # only a log warning. Raise the limit (never lower it) to what these parts need.
        needed = 2 * len(compiled) + 8
        dynamo_config = torch._dynamo.config
        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, needed)
        dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, needed)
        return compiled


def _whole_adapted_layers(denoiser: nn.Module, pruned: list[str]) -> list[str]:
    """A LoRA-adapted layer (peft's wrapper around ``base_layer``, ``lora_A``, ``lora_B``) that feeds nothing
    has its linear parts skipped one by one, which peft's forward cannot run (it reads ``lora_A.weight``):
    skip the whole layer instead. Pruned (never entered) wrappers need nothing, they are never called."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    wrappers = {name: m for name, m in denoiser.named_modules() if isinstance(m, BaseTunerLayer)}
    if not wrappers:
        return pruned
    out = []
    for name in pruned:
        owner = next((w for w in wrappers if name.startswith(f'{w}.')), None)
        if owner is None:
            out.append(name)
        elif owner not in out and isinstance(denoiser.get_submodule(name), SkippedLinear):
            parent, _, child = owner.rpartition('.')
            denoiser.get_submodule(parent)._modules[child] = SkippedLinear(owner, wrappers[owner].out_features)
            out.append(owner)
        elif owner not in out:
            out.append(name)  # a part pruned inside a wrapper that runs: leave it to fail loudly if called
    return out
