"""Drop the denoiser modules a backbone never needs: the tail after its last requested activation, and
the projections that run before it but feed nothing it captures.

Both are measured, not guessed, in one probe forward at the smallest valid latent size (on the
denoiser's own device, so the meta device works too):

- modules never entered before the capture stops the forward are replaced by ``PrunedModule``
  placeholders, which hold no parameters and fail loudly if anything ever calls them;
- linear layers that ran but whose output has no autograd path to any captured activation (an
  attention's ``to_q`` when its ``to_k`` is the last activation: the processor computes q first) are
  replaced by ``SkippedLinear``, which returns zeros of the right shape. They held weights that could
  never get a gradient and cost a matmul per forward.

Container lengths and indices are kept, so the denoiser's own forward code runs unchanged up to the
stop point. A module that is never called but whose parameters its parent reads directly (Hunyuan's
attention pooling passes ``q_proj.weight`` to ``F.multi_head_attention_forward``) is kept: every
parameter a torch function receives during the probe counts as used.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ['PrunedModule', 'SkippedLinear', 'prune_unexecuted', 'prune_later_blocks']


class PrunedModule(nn.Module):
    """Placeholder for a denoiser part after the last requested activation."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, *args, **kwargs):
        raise RuntimeError(f'denoiser module {self.path!r} was pruned: it runs after the last activation this '
                           'backbone captures. Build the backbone with prune=False to keep the whole denoiser.')

    def extra_repr(self) -> str:
        return self.path


class SkippedLinear(nn.Module):
    """Stands in for a linear layer whose output reaches no captured activation: zeros, no weights."""

    def __init__(self, path: str, out_features: int):
        super().__init__()
        self.path, self.out_features = path, out_features

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f'{self.path}, out_features={self.out_features}'


def _dead_linears(captured: Sequence[torch.Tensor], outputs: dict[str, list[torch.Tensor]]) -> list[str]:
    """Linear layers none of whose outputs has an autograd path to ``captured``."""
    names = [n for n, outs in outputs.items() if outs]
    flat = [out for n in names for out in outputs[n]]
    if not captured or not flat:
        return []
    with torch.enable_grad():  # the backbone may be built under no_grad
        total = sum(c.float().sum() for c in captured)
    grads = iter(torch.autograd.grad(total, flat, allow_unused=True))
    return [n for n in names if all(next(grads) is None for _ in outputs[n])]


class _ParametersUsed(TorchFunctionMode):
    """Records every parameter passed to a torch function while active (by identity)."""

    def __init__(self):
        super().__init__()
        self.used: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for leaf in tree_leaves((args, kwargs or {})):
            if isinstance(leaf, nn.Parameter):
                self.used.add(id(leaf))
        return func(*args, **(kwargs or {}))


def prune_unexecuted(model: nn.Module, run: Callable[[], Sequence[torch.Tensor]]) -> list[str]:
    """Call ``run()`` (a forward of ``model`` that may stop early) and prune what it does not need.

    Args:
        model: The denoiser.
        run: Runs the probe forward and returns the captured activations. When they carry autograd
            graphs (the probe ran with grad enabled from an input that requires grad), linear layers
            that ran without reaching them are replaced by ``SkippedLinear``.

    Returns:
        Dotted paths of the pruned subtrees and skipped layers.
    """
    entered: set[str] = set()
    outputs: dict[str, list[torch.Tensor]] = {}

    def record_output(name, out):
        if torch.is_tensor(out) and out.requires_grad:
            outputs.setdefault(name, []).append(out)

    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.add(name))
               for name, m in model.named_modules()]
    handles += [m.register_forward_hook(lambda mod, a, out, name=name: record_output(name, out))
                for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    params_used = _ParametersUsed()
    try:
        with params_used:
            captured = [c for c in run() if c.requires_grad]
        dead = _dead_linears(captured, outputs)
    finally:
        for handle in handles:
            handle.remove()
    outputs.clear()
    for name in dead:
        parent_name, _, child = name.rpartition('.')
        model.get_submodule(parent_name)._modules[child] = SkippedLinear(name, model.get_submodule(name).out_features)
    # a container (ModuleList, or a module whose forward was skipped) is kept when a descendant ran
    keep = set()
    for name, module in model.named_modules():  # never called, but its weights were read directly
        if name not in entered and any(id(p) in params_used.used for p in module.parameters(recurse=False)):
            entered.add(name)
    for name in entered:
        parts = name.split('.') if name else []
        keep.update('.'.join(parts[:i]) for i in range(len(parts) + 1))
    pruned = []
    for name, module in list(model.named_modules()):  # parents come before their children
        if not name or name in keep:
            continue
        parent_name, _, child = name.rpartition('.')
        if parent_name in keep and isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            # A list the forward iterates (zip(self.resnets, self.attentions)) must stay a list even when
            # none of its members ran: its members are pruned one by one instead.
            keep.add(name)
            continue
        holds_tensors = next(itertools.chain(module.parameters(), module.buffers()), None) is not None
        if parent_name in keep and holds_tensors:
            model.get_submodule(parent_name)._modules[child] = PrunedModule(name)
            pruned.append(name)
    return pruned + dead


def _block_of(model: nn.Module, path: str) -> str | None:
    """The path of the block (a ModuleList element) that holds ``path``, or None outside every list."""
    parts, module = path.split('.'), model
    for i, part in enumerate(parts):
        if isinstance(module, nn.ModuleList):
            return '.'.join(parts[:i + 1])
        module = getattr(module, part)
    return None


def prune_later_blocks(model: nn.Module, catalog: Sequence, requested: Sequence) -> list[str]:
    """Prune by catalog order instead of a probe: the blocks whose activations all come after the last requested one.

    For the meta device, where a denoiser whose forward reads values (Lumina 2's and HunyuanImage's caption lengths:
    ``nonzero``, ``.item()``) cannot run a probe. Blocks are the members of the denoiser's ModuleLists; the rest (the
    output norm and projection) is kept, so the count is an upper bound of what the probe would keep.
    """
    last = max(point.order for point in requested)
    needed = {_block_of(model, point.module) for point in catalog if point.order <= last}
    later = {_block_of(model, point.module) for point in catalog if point.order > last} - needed - {None}
    for name in sorted(later):
        parent_name, _, child = name.rpartition('.')
        model.get_submodule(parent_name)._modules[child] = PrunedModule(name)
    return sorted(later)
