"""Drop the denoiser modules a backbone never runs (everything after its last requested activation).

Which modules run is measured, not guessed: one probe forward at the smallest valid latent size
(on the denoiser's own device, so the meta device works too) records every module entered before
the capture stops the forward. Modules that never ran are replaced by ``PrunedModule`` placeholders,
which hold no parameters and fail loudly if anything ever calls them. Container lengths and
indices are kept, so the denoiser's own forward code runs unchanged up to the stop point.
"""
from __future__ import annotations

import itertools
from typing import Callable

import torch.nn as nn

__all__ = ['PrunedModule', 'prune_unexecuted']


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


def prune_unexecuted(model: nn.Module, run: Callable[[], None]) -> list[str]:
    """Call ``run()`` (a forward of ``model`` that may stop early) and prune what it never entered.

    Returns:
        Dotted paths of the pruned subtrees.
    """
    entered: set[str] = set()
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.add(name))
               for name, m in model.named_modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    # a container (ModuleList, or a module whose forward was skipped) is kept when a descendant ran
    keep = set()
    for name in entered:
        parts = name.split('.') if name else []
        keep.update('.'.join(parts[:i]) for i in range(len(parts) + 1))
    pruned = []
    for name, module in list(model.named_modules()):
        if not name or name in keep:
            continue
        parent_name, _, child = name.rpartition('.')
        holds_tensors = next(itertools.chain(module.parameters(), module.buffers()), None) is not None
        if parent_name in keep and holds_tensors:
            model.get_submodule(parent_name)._modules[child] = PrunedModule(name)
            pruned.append(name)
    return pruned
